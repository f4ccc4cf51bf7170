"""float64 references for the training-loop pieces around the update rules:
gradient clipping (section 8.2.4) and Polyak averaging (section 8.7.3, eq. 8.39)."""
import numpy as np


def global_norm(grads):
    return float(np.sqrt(sum(float(np.sum(np.asarray(g, np.float64) ** 2)) for g in grads)))


def clip_by_global_norm(grads, max_norm):
    """g ← g·min(1, c/(‖g‖ + 1e-6)) with ‖g‖ over all arrays; returns (clipped, norm)."""
    norm = global_norm(grads)
    factor = min(1.0, max_norm / (norm + 1e-6))
    return [np.asarray(g, np.float64) * factor for g in grads], norm


def clip_by_value(grads, c):
    return [np.clip(np.asarray(g, np.float64), -c, c) for g in grads]


def adam_step(theta, g, s, r, t, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8):
    """Algorithm 8.7, float64."""
    s = b1 * s + (1 - b1) * g
    r = b2 * r + (1 - b2) * g * g
    theta = theta - lr * (s / (1 - b1 ** t)) / (np.sqrt(r / (1 - b2 ** t)) + eps)
    return theta, s, r


def uniform_average(iterates):
    """θ̂ₜ = θ̂ₜ₋₁ + (θₜ − θ̂ₜ₋₁)/t over θ₁..θₜ, i.e. their mean."""
    return np.mean(np.stack([np.asarray(x, np.float64) for x in iterates]), axis=0)


def ema_average(start, iterates, decay):
    """θ̂ₜ = αθ̂ₜ₋₁ + (1−α)θₜ, θ̂₀ = start (eq. 8.39)."""
    avg = np.asarray(start, np.float64)
    for x in iterates:
        avg = decay * avg + (1 - decay) * np.asarray(x, np.float64)
    return avg
