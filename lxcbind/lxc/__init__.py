"""The binding layer: liblxc, libnftables and the host system calls only C can make.

The only modules that touch ``lib`` (the cffi module ``lxcbind._lxc``)."""
