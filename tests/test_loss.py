import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from flip.loss import ContrastiveLoss


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
