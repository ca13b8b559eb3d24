"""The data planes behind one interface (base.py): the pure-Python one, and the
native one (native/ in C, driven by native.py through the cffi wrapper dp.py)."""
