"""The C99 target: `model.int.onnx` -> c/lowbit_model.{h,c} (target.py), planned by plan.py/ops.py,
packed by pack.py, with bit-serial and dot-product convolutions in bitserial.py (bit planes in
bitplanes.py), the unknown-type score in ood.py and a ctypes runner in run.py."""
