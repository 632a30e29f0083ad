"""Train on moons: a 2-D density model in one line, trained in three; then the same with the
:class:`~flowspec.accelerated.trainer.Trainer`, which adds warm-up, clipping, Polyak averaging,
evaluation, metrics and checkpoints."""
import tempfile

import torch

from flowspec.accelerated import data, models
from flowspec.accelerated.trainer import Settings, Trainer

torch.manual_seed(0)
moons = data.load("moons", seed=0)           # train (20 000, 2) and test (2 000, 2), float64
test = moons.test.float()

model = models.realnvp(2)                    # a RealNVP flow with its standard-normal base
with torch.no_grad():
    before = -model.log_prob(test).mean().item()

opt = torch.optim.Adam(model.parameters(), lr=1e-3)
for x in moons.train.float()[:25_600].split(256):  # 100 steps of 256 points
    loss = -model.log_prob(x).mean(); opt.zero_grad(); loss.backward(); opt.step()

with torch.no_grad():
    after = -model.log_prob(test).mean().item()
print(f"test NLL {before:.2f} -> {after:.2f} nats")
assert after < before - 1.0

samples = model.sample(1000)                 # x = f⁻¹(z), z ~ N(0, I)
assert samples.shape == (1000, 2) and torch.isfinite(samples).all()

with tempfile.TemporaryDirectory() as out:
    trainer = Trainer(Settings(model="realnvp", data="moons", steps=100, out=out, plots=False, progress=False))
    final = trainer.fit()                    # the last evaluation: test NLL in nats
print(f"Trainer: step {final['step']}, test NLL {final['test_nats']:.2f} nats")
assert final["test_nats"] < before - 1.0
