"""The "sim" backend: the Ascend CPU simulator. `artifact.py`: the `.omsim` artifact (what stands
in for an `.om` where there is no ATC: writer and reader); `runner.py`: `SimRunner` (one graph:
acceptance, precision-mode numerics, simulated cost); `session.py`: the LM backend over an
`.omsim` or an export directory; `opener.py`: recognizes an `.omsim`. The engine itself
(numerics, acceptance, cost) is `ascend_adapt.sim`. Nothing heavy is imported here."""

from ascend_adapt.backends import Backend, register

BACKEND = register(Backend(
    name="sim",
    summary="the Ascend CPU simulator (simulated: acceptance, card numerics, estimated cost)",
    session="ascend_adapt.backends.sim.session:sim_backend",
    runner="ascend_adapt.backends.sim.opener:open_graph",
    opener="ascend_adapt.backends.sim.opener:recognize",
    locate="ascend_adapt.backends.sim.opener:locate",
    requires=("onnx", "onnxruntime"),
    device="cpu (simulating the target's card)",
    simulated=True,
    precisions=("fp16", "fp32", "int8"),
    options=("precision_mode", "keep_dtype", "target", "modify_mixlist", "check", "cost", "threads"),
    detect_order=10,
    precision_label="manifest precision (simulator)",
))
