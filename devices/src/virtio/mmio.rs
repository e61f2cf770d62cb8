//! virtio-mmio transport.
