"""--compile: torch.compile of the autocast-wrapped network alone; checkpoints stay plain, and a
compiled run resumes in eager mode and back, exactly.

The compiler is dynamo with its "eager" backend here: the graph capture and the wrapping are
what the Trainer owns, and inductor's code generation takes minutes on a 2-core CI machine.
"""

import functools

import torch

from helpers.training import make_trainer


def test_compiled_training_checkpoints_plain_state_and_resumes_either_way(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    eager = make_trainer(tmp_path / "eager", 4)
    eager.fit()

    compiled = make_trainer(tmp_path / "compiled", 2, compile=True)
    assert isinstance(compiled.net, torch._dynamo.eval_frame.OptimizedModule)
    assert compiled.net._orig_mod.net is compiled.model  # the network alone, under its autocast wrapper
    compiled.fit()
    state = torch.load(tmp_path / "compiled" / "checkpoint.pt", weights_only=False)
    assert not [k for part in ("model", "ema") for k in state[part] if "_orig_mod" in k]
    resumed_eager = make_trainer(tmp_path / "compiled", 4)
    resumed_eager.resume(tmp_path / "compiled" / "checkpoint.pt")
    resumed_eager.fit()
    assert compiled.losses + resumed_eager.losses == eager.losses

    first = make_trainer(tmp_path / "back", 2)
    first.fit()
    resumed_compiled = make_trainer(tmp_path / "back", 4, compile=True)
    resumed_compiled.resume(tmp_path / "back" / "checkpoint.pt")
    resumed_compiled.fit()
    assert first.losses + resumed_compiled.losses == eager.losses
    for p, q in zip(resumed_compiled.model.state_dict().values(), eager.model.state_dict().values()):
        assert torch.equal(p, q)
