"""Exports of flipctl models to other toolkits' formats."""
