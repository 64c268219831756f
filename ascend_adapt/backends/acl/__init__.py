"""The "acl" backend: real `.om` files on an Ascend card through pyACL (or ais_bench).
`runtime.py`: the process's one ACL runtime; `runner.py`: `AclRunner` / `AisBenchRunner` (one
OM); `session.py`: the LM backend over a converted model's OMs; `opener.py`: recognizes an
`.om` and finds the OMs of a convert output. Without CANN, `ASCEND_ADAPT_ACL=fake` runs the same
code against the strict fake pyACL (`ascend_adapt.testing.fake_acl`). Nothing heavy (no `acl`)
is imported here."""

from ascend_adapt.backends import Backend, register

BACKEND = register(Backend(
    name="acl",
    summary="real .om files on an Ascend card through pyACL (ASCEND_ADAPT_ACL=fake: the strict fake)",
    session="ascend_adapt.backends.acl.session:acl_backend",
    runner="ascend_adapt.backends.acl.opener:open_graph",
    opener="ascend_adapt.backends.acl.opener:recognize",
    locate="ascend_adapt.backends.acl.opener:locate",
    requires=("acl",),
    device="Ascend NPU",
    precisions=("as compiled",),
    options=("device_id", "device_ids", "engine", "acl", "session_cls", "kv_cache"),
    generate_options={"kv_cache": "device"},  # the KV cache stays on the card (docs/deployment.md)
    detect_order=20,
    precision_label="as compiled (card)",
))
