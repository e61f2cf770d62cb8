//! [`Block`]: the device model, its configuration space and its place in the
//! event loop.

use std::fs::{File, OpenOptions};
use std::io;
use std::mem::offset_of;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::GuestMemoryMmap;
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::{debug, error};
use virtio_bindings::bindings::virtio_blk::{
    virtio_blk_config, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueState};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::engine::{Completion, Engine};
use super::request::Disk;
use super::{
    BlockConfig, BlockCounters, BlockError, BlockState, EngineType, ID_BYTES, QUEUE_SIZE,
    SECTOR_SIZE,
};
use crate::virtio::active::ActiveQueues;
use crate::virtio::{
    read_config_bytes, ActivateError, DeviceState, Interrupt, StateError, VirtioCommon,
    VirtioDevice, TYPE_BLOCK, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};

const CAPACITY_OFFSET: usize = offset_of!(virtio_blk_config, capacity);
const SEG_MAX_OFFSET: usize = offset_of!(virtio_blk_config, seg_max);
/// The config image covers the fields this device fills in; reads past it
/// are zeros.
const CONFIG_LEN: usize = SEG_MAX_OFFSET + 4;

// Event loop tokens.
const QUEUE_TOKEN: u32 = 0;
const COMPLETION_TOKEN: u32 = 1;

/// What activation hands the device: where its one queue lives and how to
/// interrupt.
pub(super) type Active = ActiveQueues<1>;

/// A virtio-blk device backed by a raw image file.
///
/// Put it in an `Arc<Mutex<Block>>`, give that to
/// [`MmioTransport`](crate::virtio::mmio::MmioTransport) as the
/// `VirtioDevice` and to the event manager as a `MutEventSubscriber`.
pub struct Block {
    pub(super) engine: Engine,
    pub(super) active: Option<Active>,
    pub(super) disk: Disk,
    pub(super) path: PathBuf,
    drive_id: String,
    common: VirtioCommon,
    config: [u8; CONFIG_LEN],
    pub(super) counters: BlockCounters,
    /// Scratch for parsing chains.
    pub(super) descs: Vec<Descriptor>,
    /// Finished requests waiting to go into the used ring.
    pub(super) done: Vec<Completion>,
    /// Queue draining stopped because the engine had no room; completions
    /// resume it.
    pub(super) stalled: bool,
    /// The driver corrupted the queue; ignore it until reset.
    pub(super) broken: bool,
}

impl Block {
    /// Open the image and build the device.
    pub fn new(cfg: &BlockConfig) -> Result<Self, BlockError> {
        let file = open_image(&cfg.path, cfg.read_only)?;
        let path = cfg.path.clone();
        let meta = file.metadata().map_err(|source| BlockError::Metadata {
            path: path.clone(),
            source,
        })?;
        if !meta.is_file() {
            return Err(BlockError::NotAFile { path });
        }
        let size = meta.len();
        if size % SECTOR_SIZE != 0 {
            return Err(BlockError::UnalignedSize { path, size });
        }
        let queue_evt = EventFd::new(EFD_NONBLOCK).map_err(|source| BlockError::EventFd {
            path: path.clone(),
            source,
        })?;

        let mut avail_features = (1u64 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << VIRTIO_BLK_F_FLUSH)
            | (1 << VIRTIO_BLK_F_SEG_MAX);
        if cfg.read_only {
            avail_features |= 1 << VIRTIO_BLK_F_RO;
        }
        let mut config = [0u8; CONFIG_LEN];
        config[CAPACITY_OFFSET..CAPACITY_OFFSET + 8]
            .copy_from_slice(&(size / SECTOR_SIZE).to_le_bytes());
        // Two descriptors of every chain carry the header and the status.
        let seg_max = u32::from(QUEUE_SIZE) - 2;
        config[SEG_MAX_OFFSET..SEG_MAX_OFFSET + 4].copy_from_slice(&seg_max.to_le_bytes());

        let mut id = [0u8; ID_BYTES];
        for (d, s) in id.iter_mut().zip(cfg.drive_id.bytes()) {
            *d = s;
        }

        Ok(Self {
            engine: Engine::new(cfg.engine, file, &path, u32::from(QUEUE_SIZE)),
            active: None,
            disk: Disk {
                capacity: size,
                read_only: cfg.read_only,
                cache: cfg.cache,
                id,
            },
            path,
            drive_id: cfg.drive_id.clone(),
            common: VirtioCommon::new(
                TYPE_BLOCK,
                avail_features,
                vec![QUEUE_SIZE],
                vec![queue_evt],
            ),
            config,
            counters: BlockCounters::default(),
            descs: Vec::with_capacity(usize::from(QUEUE_SIZE)),
            done: Vec::with_capacity(usize::from(QUEUE_SIZE)),
            stalled: false,
            broken: false,
        })
    }

    /// Serve another image from now on (Firecracker's PATCH /drives):
    /// same read-only mode, new size. Requests already taken finish on the
    /// old file first. The caller tells the driver (a configuration-change
    /// interrupt) so it reads the new capacity.
    pub fn swap_backing(&mut self, path: &Path) -> Result<(), BlockError> {
        let file = open_image(path, self.disk.read_only)?;
        let meta = file.metadata().map_err(|source| BlockError::Metadata {
            path: path.to_path_buf(),
            source,
        })?;
        if !meta.is_file() {
            return Err(BlockError::NotAFile {
                path: path.to_path_buf(),
            });
        }
        let size = meta.len();
        if size % SECTOR_SIZE != 0 {
            return Err(BlockError::UnalignedSize {
                path: path.to_path_buf(),
                size,
            });
        }
        // Requests already handed to the host finish on the old file; they
        // are answered below, after the swap.
        if !self.engine.finish_in_flight(&mut self.done) || self.engine.replace_file(file).is_err()
        {
            return Err(BlockError::Busy {
                path: self.path.clone(),
            });
        }
        self.disk.capacity = size;
        self.config[CAPACITY_OFFSET..CAPACITY_OFFSET + 8]
            .copy_from_slice(&(size / SECTOR_SIZE).to_le_bytes());
        self.path = path.to_path_buf();
        self.process_completions();
        Ok(())
    }

    /// The image this device serves.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn drive_id(&self) -> &str {
        &self.drive_id
    }

    /// Size in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.disk.capacity / SECTOR_SIZE
    }

    pub fn read_only(&self) -> bool {
        self.disk.read_only
    }

    /// The engine in use: `IoUring` may have fallen back to `Sync`.
    pub fn engine(&self) -> EngineType {
        self.engine.kind()
    }

    pub fn counters(&self) -> BlockCounters {
        self.counters
    }

    /// Requests handed to the host and not finished yet.
    pub fn in_flight(&self) -> usize {
        self.engine.in_flight()
    }

    /// The queue's kick EventFd (also in `queue_events()`).
    pub fn queue_event(&self) -> &EventFd {
        self.common.queue_event(0)
    }

    /// With io_uring, readable when requests have finished.
    pub fn completion_event(&self) -> Option<&EventFd> {
        self.engine.completion_event()
    }

    /// The queue EventFd fired: take new requests.
    pub fn handle_queue_event(&mut self) {
        if let Err(e) = self.queue_event().read() {
            if e.kind() != io::ErrorKind::WouldBlock {
                error!(
                    "disk {}: reading the queue EventFd: {e}",
                    self.path.display()
                );
            }
        }
        self.process_queue();
    }

    /// The completion EventFd fired: answer finished requests.
    pub fn handle_completion_event(&mut self) {
        if let Some(evt) = self.engine.completion_event() {
            if let Err(e) = evt.read() {
                if e.kind() != io::ErrorKind::WouldBlock {
                    error!(
                        "disk {}: reading the completion EventFd: {e}",
                        self.path.display()
                    );
                }
            }
        }
        self.process_completions();
    }

    /// Stop all host I/O into guest memory before the memory is let go. If
    /// the kernel will not say when in-flight I/O is done, the mapping is
    /// leaked rather than risk I/O landing in memory reused for something
    /// else.
    fn quiesce(&mut self) {
        if !self.engine.drain() {
            if let Some(active) = &self.active {
                std::mem::forget(active.mem.clone());
            }
        }
        self.done.clear();
    }
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("path", &self.path)
            .field("drive_id", &self.drive_id)
            .field("read_only", &self.disk.read_only)
            .field("engine", &self.engine.kind())
            .field("active", &self.active.is_some())
            .field("counters", &self.counters)
            .finish()
    }
}

fn open_image(path: &Path, read_only: bool) -> Result<File, BlockError> {
    OpenOptions::new()
        .read(true)
        .write(!read_only)
        .open(path)
        .map_err(|source| {
            let path = path.to_path_buf();
            match source.kind() {
                io::ErrorKind::NotFound => BlockError::NotFound { path },
                io::ErrorKind::PermissionDenied => BlockError::PermissionDenied {
                    path,
                    mode: if read_only { "read-only" } else { "read-write" },
                },
                _ if source.raw_os_error() == Some(libc::EISDIR) => BlockError::NotAFile { path },
                _ => BlockError::Open { path, source },
            }
        })
}

impl VirtioDevice for Block {
    fn common(&self) -> &VirtioCommon {
        &self.common
    }

    fn common_mut(&mut self) -> &mut VirtioCommon {
        &mut self.common
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Nothing here is writable without VIRTIO_BLK_F_CONFIG_WCE.
        debug!(
            "disk {}: ignored config write of {} bytes at {offset:#x}",
            self.path.display(),
            data.len()
        );
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
        queues: Vec<Queue>,
    ) -> Result<(), ActivateError> {
        let active: Active = self.common.activate_queues(mem, interrupt, queues)?;
        self.quiesce();
        self.active = Some(active);
        self.stalled = false;
        self.broken = false;
        // Let the event loop look at the queue once, in case the driver
        // queued requests before this point.
        self.queue_event().write(1).map_err(ActivateError::Signal)
    }

    fn reset(&mut self) {
        // Runs on a vCPU thread, and with io_uring waits for requests in
        // flight: resets are rare and must not leave I/O aimed at memory
        // the driver has reclaimed.
        self.quiesce();
        self.active = None;
        self.common.clear_acked();
        self.stalled = false;
        self.broken = false;
    }

    fn queue_states(&self) -> Vec<QueueState> {
        self.active
            .as_ref()
            .map_or_else(Vec::new, Active::queue_states)
    }

    /// Wait for the requests handed to the host and answer them in the used
    /// ring; requests still in the available ring stay there (the restored
    /// device takes them from `next_avail`).
    fn prepare_save(&mut self) -> Result<(), StateError> {
        if !self.engine.finish_in_flight(&mut self.done) {
            return Err(StateError::Device(
                BlockError::Busy {
                    path: self.path.clone(),
                }
                .to_string(),
            ));
        }
        self.answer_completions();
        if self.stalled {
            // The queue was left for completions to resume, and none are
            // left: have the event loop look at it when the VM runs on.
            self.stalled = false;
            if let Err(e) = self.queue_event().write(1) {
                error!("disk {}: cannot resume the queue: {e}", self.path.display());
            }
        }
        Ok(())
    }

    fn save_state(&self) -> DeviceState {
        DeviceState::Block(BlockState {
            drive_id: self.drive_id.clone(),
            read_only: self.disk.read_only,
            capacity: self.capacity(),
            counters: self.counters,
        })
    }

    fn restore_state(&mut self, state: &DeviceState) -> Result<(), StateError> {
        let DeviceState::Block(s) = state else {
            return Err(state.wrong_device("block"));
        };
        let mismatch =
            |what, saved: String, here: String| Err(StateError::Mismatch { what, saved, here });
        if s.read_only != self.disk.read_only {
            return mismatch(
                "read-only flag",
                s.read_only.to_string(),
                self.disk.read_only.to_string(),
            );
        }
        if s.drive_id != self.drive_id {
            return mismatch("drive ID", s.drive_id.clone(), self.drive_id.clone());
        }
        if s.capacity != self.capacity() {
            return mismatch(
                "disk size in sectors",
                s.capacity.to_string(),
                format!("{} ({})", self.capacity(), self.path.display()),
            );
        }
        self.counters = s.counters;
        Ok(())
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        self.quiesce();
    }
}

impl MutEventSubscriber for Block {
    fn init(&mut self, ops: &mut EventOps) {
        let queue = Events::with_data(self.queue_event(), QUEUE_TOKEN, EventSet::IN);
        if let Err(e) = ops.add(queue) {
            error!(
                "disk {}: cannot watch the queue EventFd: {e}",
                self.path.display()
            );
        }
        if let Some(evt) = self.engine.completion_event() {
            let completions = Events::with_data(evt, COMPLETION_TOKEN, EventSet::IN);
            if let Err(e) = ops.add(completions) {
                error!(
                    "disk {}: cannot watch io_uring completions: {e}",
                    self.path.display()
                );
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        match events.data() {
            QUEUE_TOKEN => self.handle_queue_event(),
            COMPLETION_TOKEN => self.handle_completion_event(),
            other => error!(
                "disk {}: unexpected event token {other}",
                self.path.display()
            ),
        }
    }
}
