"""The torch samplers recover a known chunk from an exact predictor, attention masks padding, and the
training losses are seeded and trainable. (Parity tests then tie the ONNX graphs to this torch code.)"""

import numpy as np
import pytest
import torch

from policies.config import make_config
from policies.export import example_inputs
from policies.models import build_policy

# Needs the train extra throughout: not collected by the robot-side run (tests/conftest.py).
pytestmark = pytest.mark.workstation


class ExactFlowExpert(torch.nn.Module):
    """v(x, t) = (x - x0) / t: the straight-line velocity that carries x_t = t*noise + (1-t)*x0 to x0."""

    def __init__(self, x0):
        super().__init__()
        self.x0 = x0

    def forward(self, x, t, prefix_kv, prefix_bias):
        return (x - self.x0) / t[:, None, None], torch.zeros(x.shape[0], 4)


class ExactEpsExpert(torch.nn.Module):
    """eps(x, t) = (x - sqrt(a_t) x0) / sqrt(1 - a_t): the true noise for a sample on x0's forward process."""

    def __init__(self, x0, alphas_cumprod, train_steps):
        super().__init__()
        self.x0, self.a, self.T = x0, alphas_cumprod, train_steps

    def forward(self, x, t, prefix_kv, prefix_bias):
        a = self.a[torch.round(t * self.T).long()][:, None, None]
        return (x - a.sqrt() * self.x0) / (1 - a).sqrt(), torch.zeros(x.shape[0], 4)


@pytest.mark.parametrize("size", ["tiny", "default"])
def test_flow_euler_recovers_the_target_from_an_exact_velocity(size):
    policy = build_policy(make_config(size, "flow"))
    _, _, _, noise = example_inputs(policy.cfg, n=5)
    x0 = torch.randn_like(noise)
    policy.expert = ExactFlowExpert(x0)
    chunks, _ = policy.sample(None, None, noise)
    torch.testing.assert_close(chunks, x0, atol=1e-5, rtol=0)


@pytest.mark.parametrize("size", ["tiny", "default"])
def test_ddim_recovers_the_target_from_the_true_noise(size):
    policy = build_policy(make_config(size, "diffusion"))
    cfg = policy.cfg
    _, _, _, noise = example_inputs(cfg, n=5)
    x0 = torch.randn_like(noise).clamp(-3, 3)
    policy.expert = ExactEpsExpert(x0, policy.alphas_cumprod, cfg.diffusion_train_steps)
    chunks, _ = policy.sample(None, None, noise)
    torch.testing.assert_close(chunks, x0, atol=1e-4, rtol=0)
    # Leading spacing: starts at T - T/S and ends on the clean sample.
    T, S = cfg.diffusion_train_steps, cfg.num_steps
    assert round(float(policy.ddim_t[0]) * T) == T - T // S and round(float(policy.ddim_t[-1]) * T) == 0
    assert float(policy.ddim_sqrt_aprev[-1]) == 1.0


@pytest.mark.parametrize("kind", ["flow", "diffusion"])
def test_padding_tokens_do_not_influence_the_output(kind):
    """Changing the embedding of the PAD id changes only padded prefix entries, which attention ignores."""
    policy = build_policy(make_config("tiny", kind))
    images, state, tokens, noise = example_inputs(policy.cfg, n=3)
    assert (tokens == 0).any()
    with torch.no_grad():
        kv1, bias = policy.encode(images, state, tokens)
        chunks1, _ = policy.sample(kv1, bias, noise)
        policy.encoder.text_embed.weight[0] += torch.randn(policy.cfg.enc_dim) * 5.0  # LayerNorm ignores a constant
        kv2, _ = policy.encode(images, state, tokens)
        chunks2, _ = policy.sample(kv2, bias, noise)
    real = bias[0] == 0
    torch.testing.assert_close(kv1[..., real, :], kv2[..., real, :], atol=1e-5, rtol=0)
    assert (kv1[..., ~real, :] - kv2[..., ~real, :]).abs().max() > 1e-3
    torch.testing.assert_close(chunks1, chunks2, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["flow", "diffusion"])
def test_loss_is_seeded_and_decreases_when_fitting_one_batch(kind):
    torch.manual_seed(0)
    policy = build_policy(make_config("tiny", kind)).train()
    images, state, tokens, _ = example_inputs(policy.cfg, batch=8)
    actions = torch.randn(8, policy.cfg.chunk_length, len(policy.cfg.action_names)) * 0.5
    a = policy.loss(images, state, tokens, actions, generator=torch.Generator().manual_seed(1))
    b = policy.loss(images, state, tokens, actions, generator=torch.Generator().manual_seed(1))
    assert a.item() == b.item()
    optim = torch.optim.Adam(policy.parameters(), lr=3e-3)
    losses = []
    for step in range(60):
        loss = policy.loss(images, state, tokens, actions, generator=torch.Generator().manual_seed(step))
        optim.zero_grad()
        loss.backward()
        optim.step()
        losses.append(loss.item())
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10])
