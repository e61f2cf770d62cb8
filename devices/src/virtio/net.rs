//! virtio-net.
