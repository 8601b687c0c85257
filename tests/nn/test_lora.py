import torch
from torch import nn

from zscir.nn.lora import LoRAConfig, apply_lora, count_parameters, is_pointwise_conv, lora_state_dict, merge_lora


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(4, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))


def test_lora_starts_as_identity_trains_and_merges():
    net = _net()
    x = torch.randn(3, 4, 4, 4)
    before = net(x).detach()
    wrapped = apply_lora(net, lambda n, m: isinstance(m, nn.Linear) or is_pointwise_conv(m), LoRAConfig(rank=2, alpha=4, dropout=0.0))
    assert wrapped == ["0", "4"]  # the 3x3 conv is not a pointwise conv
    assert torch.allclose(net(x), before, atol=1e-6)  # B starts at zero
    trainable, total = count_parameters(net)
    assert 0 < trainable < total
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.5)
    for _ in range(3):
        loss = net(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    tuned = net(x).detach()
    assert not torch.allclose(tuned, before)
    sd = lora_state_dict(net)
    assert set(sd) == {"0.lora_A", "0.lora_B", "4.lora_A", "4.lora_B"}
    assert merge_lora(net) == 2
    assert torch.allclose(net(x), tuned, atol=1e-5)
    assert not any("lora" in k for k in net.state_dict())
