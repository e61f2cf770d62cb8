//! virtio-balloon.
