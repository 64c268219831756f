"""Test utilities that ship with the package (documented, importable by users' own tests).

- `ascend_adapt.testing.fake_acl`: a strict fake of CANN's pyACL (`acl` module) that runs the
  converted graphs through onnxruntime on fake device memory, checks pointers, bounds, memcpy
  kinds and the init / finalize life cycle, and counts every call and byte. Set
  `ASCEND_ADAPT_ACL=fake` to make every acl code path use it.
"""
