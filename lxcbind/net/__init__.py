"""Container networks: routed veths, address leases, the nftables ruleset, resolv.conf."""
