"""An analytically known denoiser: data x0 ~ N(m, c²) per element, whose exact PF-ODE solution is known."""

import torch

from ard_scale.diffusion.schedules import FlowSchedule


class GaussianDenoiser:
    """The optimal network for Gaussian data N(mean + shift·label, std²), in the schedule's native parameterisation.

    Called as a denoiser `(x_t, t_model_B, cond) -> out`; with a Condition of labels, the data mean is shifted by the
    label so that classifier-free guidance has something to act on. `num_calls` / `batch_sizes` record the forwards.
    """

    def __init__(self, schedule, mean=0.3, std=0.5, label_shift=0.0, extra_channels=0):
        self.schedule, self.mean, self.std, self.label_shift = schedule, mean, std, label_shift
        self.extra_channels = extra_channels
        self.batch_sizes = []

    def time(self, t_model):
        t = t_model.double()
        return t / 1000 if isinstance(self.schedule, FlowSchedule) else t

    def data_mean(self, cond, like):
        m = torch.full((like.shape[0],), self.mean, dtype=like.dtype)
        if cond is not None and cond.labels is not None:
            m = m + self.label_shift * cond.labels.to(like.dtype)
        return m.reshape(-1, 1, 1, 1)

    def __call__(self, x, t_model, cond=None):
        self.batch_sizes.append(x.shape[0])
        alpha, sigma = (v.to(x.dtype).reshape(-1, 1, 1, 1) for v in self.schedule.alpha_sigma(self.time(t_model)))
        m = self.data_mean(cond, x)
        x0 = m + alpha * self.std**2 / (alpha**2 * self.std**2 + sigma**2) * (x - alpha * m)
        eps = (x - alpha * x0) / sigma
        pt = self.schedule.prediction_type
        out = eps if pt == "epsilon" else alpha * eps - sigma * x0 if pt == "v_prediction" else eps - x0
        if self.extra_channels:  # learned-sigma style junk channels that the ODE must ignore
            out = torch.cat([out, torch.full_like(out[:, : self.extra_channels], 1e6)], dim=1)
        return out

    def exact_solution(self, x_T, t_start, m=None):
        """The PF-ODE's clean endpoint from x_T at t_start: z = (x − α·m)/√(α²c² + σ²) is constant along it."""
        m = self.mean if m is None else m
        alpha, sigma = (float(v) for v in self.schedule.alpha_sigma(torch.tensor(float(t_start))))
        z = (x_T - alpha * m) / (alpha**2 * self.std**2 + sigma**2) ** 0.5
        return m + self.std * z
