"""Images: root filesystems a sandbox starts from, below the sandbox layer (snapshots of a
running sandbox: ``snapshot``; layer copying with owners remapped: ``layercopy``)."""
