import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from flip.loss import ChunkedSigmoidLoss, ContrastiveLoss, SigmoidLoss


def naive_clip_loss(img, txt, scale):
    n = img.shape[0]
    loss_i, loss_t = 0.0, 0.0
    for i in range(n):
        logits_i = torch.stack([scale * img[i] @ txt[j] for j in range(n)])
        loss_i = loss_i - torch.log_softmax(logits_i, 0)[i]
        logits_t = torch.stack([scale * txt[i] @ img[j] for j in range(n)])
        loss_t = loss_t - torch.log_softmax(logits_t, 0)[i]
    return (loss_i + loss_t) / (2 * n)


def _features(n=8, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    txt = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    return img, txt, torch.tensor(14.3)


def test_loss_matches_naive_reference():
    img, txt, scale = _features()
    torch.testing.assert_close(ContrastiveLoss()(img, txt, scale), naive_clip_loss(img, txt, scale))


def test_loss_matches_open_clip():
    from open_clip.loss import ClipLoss

    img, txt, scale = _features(32, 64, seed=3)
    torch.testing.assert_close(ContrastiveLoss()(img, txt, scale), ClipLoss()(img, txt, scale))


def _worker(rank, world, port, img, txt, scale, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    n = img.shape[0] // world
    local_img = img[rank * n:(rank + 1) * n].clone().requires_grad_(True)
    local_txt = txt[rank * n:(rank + 1) * n].clone().requires_grad_(True)
    loss = ContrastiveLoss()(local_img, local_txt, scale)
    loss.backward()
    # all_gather's backward sums every rank's loss gradient into the local features; DDP then
    # divides by the world size, so the gradient is that of the mean of the local losses.
    out[rank] = (loss.detach(), local_img.grad / world)
    dist.destroy_process_group()


@pytest.mark.integration  # two processes
def test_distributed_local_loss_equals_global_loss():
    world = 2
    img, txt, scale = _features(8, 16, seed=1)
    global_img = img.clone().requires_grad_(True)
    global_loss = ContrastiveLoss()(global_img, txt, scale)
    global_loss.backward()
    manager = mp.Manager()
    out = manager.dict()
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(world, port, img, txt, scale, out), nprocs=world, join=True)
    mean_local = sum(out[r][0] for r in range(world)) / world
    torch.testing.assert_close(mean_local, global_loss.detach())
    for r in range(world):
        torch.testing.assert_close(out[r][1], global_img.grad[r * 4:(r + 1) * 4], atol=1e-6, rtol=1e-5)


# -- the sigmoid loss (SigLIP) ---------------------------------------------------------------------------
def naive_sigmoid_loss(img, txt, scale, bias):
    """-1/n sum_i sum_j log sigmoid(z_ij (t x_i.y_j + b)), z_ij = +1 on the diagonal, else -1: the double loop."""
    n = img.shape[0]
    total = 0.0
    for i in range(n):
        for j in range(txt.shape[0]):
            z = 1.0 if i == j else -1.0
            total = total - torch.log(torch.sigmoid(z * (scale * img[i] @ txt[j] + bias)))
    return total / n


def test_sigmoid_loss_matches_a_hand_computed_value():
    # Two orthogonal pairs at SigLIP's init (t = 10, b = -10): each positive logit is 10 - 10 = 0 and each
    # negative -10, so the loss is (2 log 2 + 2 log(1 + e^-10)) / 2.
    img = torch.eye(2)
    loss = SigmoidLoss()(img, img.clone(), torch.tensor(10.0), torch.tensor(-10.0))
    expected = math.log(2) + math.log1p(math.exp(-10))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(0.6931926, abs=1e-7)


def test_sigmoid_loss_matches_the_double_loop():
    img, txt, _ = _features(6, 16, seed=2)
    scale, bias = torch.tensor(10.0), torch.tensor(-10.0)
    torch.testing.assert_close(SigmoidLoss()(img, txt, scale, bias), naive_sigmoid_loss(img, txt, scale, bias))
    scale, bias = torch.tensor(3.7), torch.tensor(0.4)  # away from the init, where negatives matter
    torch.testing.assert_close(SigmoidLoss()(img, txt, scale, bias), naive_sigmoid_loss(img, txt, scale, bias))


def _sigmoid_grads(loss_fn, img, txt, scale, bias):
    leaves = [t.clone().requires_grad_(True) for t in (img, txt, scale, bias)]
    loss = loss_fn(*leaves)
    loss.backward()
    return loss.detach(), [leaf.grad for leaf in leaves]


@pytest.mark.parametrize("chunk", [1, 3, 5, 8])
def test_chunked_sigmoid_loss_equals_the_whole_one(chunk):
    """Values and the gradients of all four inputs, including a chunk that does not divide the batch."""
    img, txt, _ = _features(8, 16, seed=4)
    scale, bias = torch.tensor(4.2), torch.tensor(-1.5)
    whole, whole_grads = _sigmoid_grads(SigmoidLoss(), img, txt, scale, bias)
    chunked, chunked_grads = _sigmoid_grads(SigmoidLoss(chunk), img, txt, scale, bias)
    torch.testing.assert_close(chunked, whole)
    for a, b in zip(chunked_grads, whole_grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_chunked_sigmoid_loss_scores_its_own_rows_of_a_larger_batch():
    """Under torch.distributed the Function sees a rank's images against all texts: `offset` places the
    positives. Its loss and gradients equal autograd's on the same [n, N] block."""
    img, txt, _ = _features(8, 16, seed=5)
    scale, bias = torch.tensor(6.0), torch.tensor(-3.0)

    def block(offset):
        def plain(i, t, s, b):
            logits = s * i @ t.T + b
            signs = -torch.ones_like(logits)
            signs[torch.arange(4), torch.arange(offset, offset + 4)] = 1.0
            return -F.logsigmoid(signs * logits).sum() / 4
        return plain

    for offset in (0, 4):
        rows = img[offset:offset + 4]
        expected, expected_grads = _sigmoid_grads(block(offset), rows, txt, scale, bias)
        got, grads = _sigmoid_grads(lambda i, t, s, b: ChunkedSigmoidLoss.apply(i, t, s, b, offset, 3),
                                    rows, txt, scale, bias)
        torch.testing.assert_close(got, expected)
        for a, b in zip(grads, expected_grads):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def _sigmoid_worker(rank, world, port, img, txt, scale, bias, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    n = img.shape[0] // world
    results = {}
    for chunk in (0, 3):
        leaves = [t.clone().requires_grad_(True) for t in (img[rank * n:(rank + 1) * n], txt[rank * n:(rank + 1) * n],
                                                          scale, bias)]
        loss = SigmoidLoss(chunk)(*leaves)
        loss.backward()
        results[chunk] = (loss.detach(), [leaf.grad for leaf in leaves])
    out[rank] = results
    dist.destroy_process_group()


@pytest.mark.integration  # two processes
def test_sigmoid_loss_in_two_processes_equals_one_process_on_the_gathered_batch():
    """2 processes (gloo): the mean of the local losses is the global loss, and the gradients, once DDP's
    averaging is applied (features: all_gather's backward sums every rank's loss, then / world; scale
    and bias: the mean over ranks), are the single-process gradients; chunked or not."""
    world = 2
    img, txt, _ = _features(8, 16, seed=6)
    scale, bias = torch.tensor(10.0), torch.tensor(-10.0)
    global_loss, (d_img, d_txt, d_scale, d_bias) = _sigmoid_grads(SigmoidLoss(), img, txt, scale, bias)
    out = mp.Manager().dict()
    mp.spawn(_sigmoid_worker, args=(world, _free_port(), img, txt, scale, bias, out), nprocs=world, join=True)
    n = img.shape[0] // world
    for chunk in (0, 3):
        locals_ = [out[r][chunk] for r in range(world)]
        torch.testing.assert_close(sum(loss for loss, _ in locals_) / world, global_loss)
        for r, (_, (g_img, g_txt, _, _)) in enumerate(locals_):
            torch.testing.assert_close(g_img / world, d_img[r * n:(r + 1) * n], atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(g_txt / world, d_txt[r * n:(r + 1) * n], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(sum(g[2] for _, g in locals_) / world, d_scale, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(sum(g[3] for _, g in locals_) / world, d_bias, atol=1e-6, rtol=1e-5)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigmoid_loss_is_computed_in_float32_under_bf16_autocast():
    img, txt, _ = _features(8, 16, seed=7)
    scale, bias = torch.tensor(10.0), torch.tensor(-10.0)
    plain = SigmoidLoss()(img, txt, scale, bias)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for chunk in (0, 3):
            loss = SigmoidLoss(chunk)(img, txt, scale, bias)
            assert loss.dtype == torch.float32
            torch.testing.assert_close(loss, plain)
