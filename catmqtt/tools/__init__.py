"""This package holds the offline tools behind ``catmqtt sample``, ``import`` and
``export``: the sample data (:mod:`.sample`) and conversion between HDF5 files and
native roots (:mod:`.hdf5io`). They need no broker and no running service."""
