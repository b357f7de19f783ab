//! virtio-gpu, 2D only: the guest draws into resources in its own memory, copies rectangles of
//! them to the host (`TRANSFER_TO_HOST_2D`) and says which part of the scanout changed
//! (`RESOURCE_FLUSH`). The device keeps one host copy of each resource, in the host's pixel
//! format, and copies only the flushed rectangle of the scanout's resource into the shared
//! [`Screen`], which the window (another thread, another crate) shows.
//!
//! Every command is hostile: ids are looked up, rectangles are checked against their resource
//! with checked arithmetic, backing entries must lie in guest memory and are bounded in count,
//! and the host memory all resources take is bounded ([`MAX_HOST_MEMORY`]). A bad command gets
//! an error response; nothing a guest sends can panic the device or make it allocate more than
//! those bounds.
//!
//! The command processor, [`Gpu2d`], works on a request's bytes and guest memory only, so unit
//! tests and the fuzz target drive it without queues or threads.

mod edid;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::{Activation, GuestMemoryMmap, QueueWorker, VirtioDevice, VirtioError, serve_queue};

/// Queue size of both queues.
pub const QUEUE_SIZE: u16 = 256;
/// VIRTIO_GPU_F_EDID.
pub const F_EDID: u64 = 1 << 1;
/// Most host memory all resources together may take (QEMU's default `max_hostmem`).
pub const MAX_HOST_MEMORY: u64 = 256 << 20;
/// Largest resource side, in pixels.
pub const MAX_SIDE: u32 = 16384;
/// Largest scanout side, in pixels (8K): the window's copy of the scanout is bounded too.
pub const MAX_SCANOUT: (u32, u32) = (7680, 4320);
/// Most backing entries one `RESOURCE_ATTACH_BACKING` may name.
pub const MAX_BACKING_ENTRIES: u32 = 16384;
/// Most resources alive at once.
pub const MAX_RESOURCES: usize = 4096;
/// Most bytes of one request that are read (an attach with [`MAX_BACKING_ENTRIES`] entries).
const MAX_REQUEST: usize = HDR_LEN + 8 + 16 * MAX_BACKING_ENTRIES as usize;
/// The display size offered until the window says otherwise (QEMU's default).
pub const DEFAULT_SIZE: (u32, u32) = (1280, 800);

const HDR_LEN: usize = 24;

/// Command and response types (virtio spec 5.7.6.7).
pub mod cmd {
    /// VIRTIO_GPU_CMD_GET_DISPLAY_INFO.
    pub const GET_DISPLAY_INFO: u32 = 0x0100;
    /// VIRTIO_GPU_CMD_RESOURCE_CREATE_2D.
    pub const RESOURCE_CREATE_2D: u32 = 0x0101;
    /// VIRTIO_GPU_CMD_RESOURCE_UNREF.
    pub const RESOURCE_UNREF: u32 = 0x0102;
    /// VIRTIO_GPU_CMD_SET_SCANOUT.
    pub const SET_SCANOUT: u32 = 0x0103;
    /// VIRTIO_GPU_CMD_RESOURCE_FLUSH.
    pub const RESOURCE_FLUSH: u32 = 0x0104;
    /// VIRTIO_GPU_CMD_TRANSFER_TO_HOST_2D.
    pub const TRANSFER_TO_HOST_2D: u32 = 0x0105;
    /// VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING.
    pub const RESOURCE_ATTACH_BACKING: u32 = 0x0106;
    /// VIRTIO_GPU_CMD_RESOURCE_DETACH_BACKING.
    pub const RESOURCE_DETACH_BACKING: u32 = 0x0107;
    /// VIRTIO_GPU_CMD_GET_EDID.
    pub const GET_EDID: u32 = 0x010a;
    /// VIRTIO_GPU_CMD_UPDATE_CURSOR.
    pub const UPDATE_CURSOR: u32 = 0x0300;
    /// VIRTIO_GPU_CMD_MOVE_CURSOR.
    pub const MOVE_CURSOR: u32 = 0x0301;
    /// VIRTIO_GPU_RESP_OK_NODATA.
    pub const OK_NODATA: u32 = 0x1100;
    /// VIRTIO_GPU_RESP_OK_DISPLAY_INFO.
    pub const OK_DISPLAY_INFO: u32 = 0x1101;
    /// VIRTIO_GPU_RESP_OK_EDID.
    pub const OK_EDID: u32 = 0x1104;
    /// VIRTIO_GPU_RESP_ERR_UNSPEC.
    pub const ERR_UNSPEC: u32 = 0x1200;
    /// VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY.
    pub const ERR_OUT_OF_MEMORY: u32 = 0x1201;
    /// VIRTIO_GPU_RESP_ERR_INVALID_SCANOUT_ID.
    pub const ERR_INVALID_SCANOUT_ID: u32 = 0x1202;
    /// VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID.
    pub const ERR_INVALID_RESOURCE_ID: u32 = 0x1203;
    /// VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER.
    pub const ERR_INVALID_PARAMETER: u32 = 0x1205;
    /// VIRTIO_GPU_FLAG_FENCE.
    pub const FLAG_FENCE: u32 = 1;
}

/// A rectangle in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rect {
    /// Left edge.
    pub x: u32,
    /// Top edge.
    pub y: u32,
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
}

impl Rect {
    /// Whether the rectangle lies inside a `width` x `height` area (no overflow).
    pub fn inside(&self, width: u32, height: u32) -> bool {
        self.x.checked_add(self.width).is_some_and(|r| r <= width)
            && self.y.checked_add(self.height).is_some_and(|b| b <= height)
    }

    /// The smallest rectangle that holds both.
    pub fn union(&self, other: &Rect) -> Rect {
        if self.width == 0 || self.height == 0 {
            return *other;
        }
        if other.width == 0 || other.height == 0 {
            return *self;
        }
        let x = self.x.min(other.x);
        let y = self.y.min(other.y);
        let r = (self.x + self.width).max(other.x + other.width);
        let b = (self.y + self.height).max(other.y + other.height);
        Rect {
            x,
            y,
            width: r - x,
            height: b - y,
        }
    }

    /// The part of the rectangle inside a `width` x `height` area at the origin.
    pub fn clip(&self, width: u32, height: u32) -> Rect {
        let x = self.x.min(width);
        let y = self.y.min(height);
        Rect {
            x,
            y,
            width: self.width.min(width - x),
            height: self.height.min(height - y),
        }
    }

    fn is_empty(&self) -> bool {
        self.width == 0 || self.height == 0
    }
}

/// What the window shows: the scanout's pixels (`0x00RRGGBB`), its size and what changed since
/// the window last looked.
#[derive(Debug, Default)]
pub struct Frame {
    /// Width in pixels; 0 while the guest shows nothing.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `width * height` pixels, row by row.
    pub pixels: Vec<u32>,
    /// The changed part since the window last took it (the union of the flushed rectangles).
    pub damage: Option<Rect>,
    /// Incremented whenever the size changes.
    pub mode: u64,
    /// When the oldest flush in `damage` reached the device (for the window's latency trace).
    pub flushed_at: Option<std::time::Instant>,
}

type Waker = Box<dyn Fn() + Send + Sync>;

/// The scanout shared between the device (any number of them over reboots) and the window.
pub struct Screen {
    frame: Mutex<Frame>,
    waker: Mutex<Option<Waker>>,
    size: Mutex<(u32, u32)>,
}

impl std::fmt::Debug for Screen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Screen").finish_non_exhaustive()
    }
}

impl Screen {
    /// A screen whose display offers `width` x `height` as the preferred mode.
    pub fn new(width: u32, height: u32) -> Arc<Screen> {
        Arc::new(Screen {
            frame: Mutex::new(Frame::default()),
            waker: Mutex::new(None),
            size: Mutex::new((width.clamp(1, MAX_SIDE), height.clamp(1, MAX_SIDE))),
        })
    }

    /// Call `waker` (from the device's thread) whenever new damage is there to show; it must not
    /// block.
    pub fn set_waker(&self, waker: Waker) {
        *lock(&self.waker) = Some(waker);
    }

    /// The frame, to read and take the damage from.
    pub fn frame(&self) -> MutexGuard<'_, Frame> {
        lock(&self.frame)
    }

    /// The preferred mode the display reports to the guest.
    pub fn preferred_size(&self) -> (u32, u32) {
        *lock(&self.size)
    }

    fn wake(&self) {
        if let Some(w) = lock(&self.waker).as_ref() {
            w();
        }
    }

    /// Show nothing (scanout disabled, device reset).
    fn blank(&self) {
        {
            let mut f = self.frame();
            if f.width == 0 {
                return;
            }
            *f = Frame {
                mode: f.mode + 1,
                damage: None,
                ..Frame::default()
            };
        }
        self.wake();
    }

    /// Copy `rect` (in scanout coordinates) of the scanout from `res`, whose part at `origin`
    /// is the scanout's top left; a new size starts a new mode and damages everything.
    fn show(&self, res: &Resource, origin: (u32, u32), size: (u32, u32), rect: Rect) {
        let wake = {
            let mut f = self.frame();
            let mut rect = rect.clip(size.0, size.1);
            if (f.width, f.height) != size {
                f.width = size.0;
                f.height = size.1;
                f.pixels.clear();
                f.pixels.resize(size.0 as usize * size.1 as usize, 0);
                f.mode += 1;
                f.damage = None;
                rect = Rect {
                    x: 0,
                    y: 0,
                    width: size.0,
                    height: size.1,
                };
            }
            if rect.is_empty() {
                return;
            }
            let fw = f.width as usize;
            let rw = res.width as usize;
            for row in rect.y..rect.y + rect.height {
                let dst = row as usize * fw + rect.x as usize;
                let src = (row + origin.1) as usize * rw + (rect.x + origin.0) as usize;
                let n = rect.width as usize;
                if let (Some(d), Some(s)) =
                    (f.pixels.get_mut(dst..dst + n), res.pixels.get(src..src + n))
                {
                    d.copy_from_slice(s);
                }
            }
            let was_idle = f.damage.is_none();
            if was_idle {
                f.flushed_at = Some(std::time::Instant::now());
            }
            f.damage = Some(f.damage.map_or(rect, |d| d.union(&rect)));
            was_idle
        };
        if wake {
            self.wake();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Pixel formats (virtio_gpu_formats) and how their bytes become `0x00RRGGBB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// Bytes B, G, R, A|X: the little-endian word is already `0x..RRGGBB`.
    Bgrx,
    /// Bytes A|X, R, G, B.
    Xrgb,
    /// Bytes R, G, B, A|X.
    Rgbx,
    /// Bytes A|X, B, G, R.
    Xbgr,
}

impl Format {
    fn from_virtio(f: u32) -> Option<Format> {
        Some(match f {
            1 | 2 => Format::Bgrx,
            3 | 4 => Format::Xrgb,
            67 | 134 => Format::Rgbx,
            68 | 121 => Format::Xbgr,
            _ => return None,
        })
    }

    /// Turn pixels holding this format's bytes (as read from guest memory) into `0x00RRGGBB`,
    /// in place: one pass of word operations per format, which the compiler vectorises.
    fn convert(self, px: &mut [u32]) {
        match self {
            Format::Bgrx => px
                .iter_mut()
                .for_each(|v| *v = u32::from_le(*v) & 0x00ff_ffff),
            Format::Xrgb => px
                .iter_mut()
                .for_each(|v| *v = u32::from_le(*v).swap_bytes() & 0x00ff_ffff),
            Format::Rgbx => px.iter_mut().for_each(|v| {
                let w = u32::from_le(*v);
                *v = (w & 0xff) << 16 | (w & 0xff00) | (w >> 16 & 0xff);
            }),
            Format::Xbgr => px.iter_mut().for_each(|v| *v = u32::from_le(*v) >> 8),
        }
    }
}

/// The bytes of `px`, to read guest memory straight into pixels.
fn as_bytes_mut(px: &mut [u32]) -> &mut [u8] {
    // SAFETY: the byte slice covers exactly `px`'s memory and borrows it mutably for as long;
    // u32 has no padding and every byte pattern is a valid u32, and u8 needs no alignment.
    unsafe {
        std::slice::from_raw_parts_mut(px.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(px))
    }
}

/// One guest memory range of a resource's backing, at `offset` in the backing.
#[derive(Debug, Clone, Copy)]
struct Backing {
    offset: u64,
    addr: GuestAddress,
    len: u64,
}

#[derive(Debug)]
struct Resource {
    width: u32,
    height: u32,
    format: Format,
    pixels: Vec<u32>,
    backing: Vec<Backing>,
}

impl Resource {
    fn bytes(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height) * 4
    }
}

/// Copy `out.len()` bytes at `offset` of `backing` into `out`; false if the backing does not
/// hold them or guest memory refuses.
fn read_backing(backing: &[Backing], mem: &GuestMemoryMmap, offset: u64, out: &mut [u8]) -> bool {
    let mut done = 0usize;
    // The entry holding `offset`: entries are sorted by offset and contiguous.
    let mut i = backing.partition_point(|b| b.offset + b.len <= offset);
    while done < out.len() {
        let Some(b) = backing.get(i) else {
            return false;
        };
        let at = offset + done as u64 - b.offset;
        let n = (b.len - at).min((out.len() - done) as u64) as usize;
        let Some(addr) = b.addr.0.checked_add(at) else {
            return false;
        };
        if mem
            .read_slice(&mut out[done..done + n], GuestAddress(addr))
            .is_err()
        {
            return false;
        }
        done += n;
        i += 1;
    }
    true
}

/// The scanout: which resource, and which part of it.
#[derive(Debug, Clone, Copy)]
struct Scanout {
    resource: u32,
    rect: Rect,
}

/// The 2D command processor: resources, the scanout and the cursor.
pub struct Gpu2d {
    screen: Arc<Screen>,
    resources: BTreeMap<u32, Resource>,
    host_memory: u64,
    memory_limit: u64,
    scanout: Option<Scanout>,
    cursor: Option<(u32, u32, u32)>,
}

impl std::fmt::Debug for Gpu2d {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu2d")
            .field("resources", &self.resources.len())
            .field("host_memory", &self.host_memory)
            .finish_non_exhaustive()
    }
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn le64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn rect_at(b: &[u8], at: usize) -> Option<Rect> {
    Some(Rect {
        x: le32(b, at)?,
        y: le32(b, at + 4)?,
        width: le32(b, at + 8)?,
        height: le32(b, at + 12)?,
    })
}

/// A command's result: a response type and its payload after the header.
type Reply = Result<(u32, Vec<u8>), u32>;

fn ok() -> Reply {
    Ok((cmd::OK_NODATA, Vec::new()))
}

impl Gpu2d {
    /// A processor showing its scanout on `screen`.
    pub fn new(screen: Arc<Screen>) -> Gpu2d {
        Gpu2d::with_memory_limit(screen, MAX_HOST_MEMORY)
    }

    /// A processor whose resources may take at most `limit` bytes of host memory (the fuzz
    /// target uses a small one).
    pub fn with_memory_limit(screen: Arc<Screen>, limit: u64) -> Gpu2d {
        Gpu2d {
            screen,
            resources: BTreeMap::new(),
            host_memory: 0,
            memory_limit: limit.min(MAX_HOST_MEMORY),
            scanout: None,
            cursor: None,
        }
    }

    /// Host memory the resources take, in bytes.
    pub fn host_memory(&self) -> u64 {
        self.host_memory
    }

    /// Serve one control or cursor request (`request` is what the driver wrote); the response
    /// (header and payload) goes to `response`, which is cleared first. A request too short for
    /// its command gets `ERR_UNSPEC`; cursor commands get no response (the driver posts none).
    pub fn process(&mut self, mem: &GuestMemoryMmap, request: &[u8], response: &mut Vec<u8>) {
        response.clear();
        let Some(kind) = le32(request, 0) else {
            return Self::header(response, cmd::ERR_UNSPEC, &[0; HDR_LEN]);
        };
        let reply = match kind {
            cmd::GET_DISPLAY_INFO => Ok(self.display_info()),
            cmd::GET_EDID => self.edid(request),
            cmd::RESOURCE_CREATE_2D => self.create_2d(request),
            cmd::RESOURCE_UNREF => self.unref(request),
            cmd::SET_SCANOUT => self.set_scanout(request),
            cmd::RESOURCE_FLUSH => self.flush(request),
            cmd::TRANSFER_TO_HOST_2D => self.transfer(mem, request),
            cmd::RESOURCE_ATTACH_BACKING => self.attach(mem, request),
            cmd::RESOURCE_DETACH_BACKING => self.detach(request),
            cmd::UPDATE_CURSOR | cmd::MOVE_CURSOR => {
                self.cursor(kind, request);
                return;
            }
            _ => Err(cmd::ERR_UNSPEC),
        };
        let (kind, payload) = match reply {
            Ok(r) => r,
            Err(e) => (e, Vec::new()),
        };
        let hdr: [u8; HDR_LEN] = request
            .get(..HDR_LEN)
            .and_then(|h| h.try_into().ok())
            .unwrap_or([0; HDR_LEN]);
        Self::header(response, kind, &hdr);
        response.extend_from_slice(&payload);
    }

    /// The response header: the type, and the request's fence (flags, fence id, context and
    /// ring index) when it asked for one: commands complete in order, so the fence is done.
    fn header(out: &mut Vec<u8>, kind: u32, request: &[u8; HDR_LEN]) {
        out.extend_from_slice(&kind.to_le_bytes());
        let flags = u32::from_le_bytes([request[4], request[5], request[6], request[7]]);
        if flags & cmd::FLAG_FENCE != 0 {
            out.extend_from_slice(&request[4..HDR_LEN]);
        } else {
            out.extend_from_slice(&[0; HDR_LEN - 4]);
        }
    }

    fn display_info(&self) -> (u32, Vec<u8>) {
        let (w, h) = self.screen.preferred_size();
        let mut p = vec![0u8; 16 * 24];
        p[8..12].copy_from_slice(&w.to_le_bytes());
        p[12..16].copy_from_slice(&h.to_le_bytes());
        p[16..20].copy_from_slice(&1u32.to_le_bytes());
        (cmd::OK_DISPLAY_INFO, p)
    }

    fn edid(&self, r: &[u8]) -> Reply {
        let scanout = le32(r, HDR_LEN).ok_or(cmd::ERR_UNSPEC)?;
        if scanout != 0 {
            return Err(cmd::ERR_INVALID_SCANOUT_ID);
        }
        let (w, h) = self.screen.preferred_size();
        let block = edid::block(w, h);
        let mut p = vec![0u8; 8 + 1024];
        p[..4].copy_from_slice(&(block.len() as u32).to_le_bytes());
        p[8..8 + block.len()].copy_from_slice(&block);
        Ok((cmd::OK_EDID, p))
    }

    /// The resource a request names in its first field.
    fn resource(&mut self, r: &[u8]) -> Result<(u32, &mut Resource), u32> {
        let id = le32(r, HDR_LEN).ok_or(cmd::ERR_UNSPEC)?;
        let res = self
            .resources
            .get_mut(&id)
            .ok_or(cmd::ERR_INVALID_RESOURCE_ID)?;
        Ok((id, res))
    }

    fn create_2d(&mut self, r: &[u8]) -> Reply {
        let (id, format, width, height) = (|| {
            Some((
                le32(r, HDR_LEN)?,
                le32(r, HDR_LEN + 4)?,
                le32(r, HDR_LEN + 8)?,
                le32(r, HDR_LEN + 12)?,
            ))
        })()
        .ok_or(cmd::ERR_UNSPEC)?;
        if id == 0 || self.resources.contains_key(&id) {
            return Err(cmd::ERR_INVALID_RESOURCE_ID);
        }
        let format = Format::from_virtio(format).ok_or(cmd::ERR_INVALID_PARAMETER)?;
        if width == 0 || height == 0 || width > MAX_SIDE || height > MAX_SIDE {
            return Err(cmd::ERR_INVALID_PARAMETER);
        }
        let bytes = u64::from(width) * u64::from(height) * 4;
        if self.resources.len() >= MAX_RESOURCES || self.host_memory + bytes > self.memory_limit {
            return Err(cmd::ERR_OUT_OF_MEMORY);
        }
        let mut pixels = Vec::new();
        if pixels
            .try_reserve_exact(width as usize * height as usize)
            .is_err()
        {
            return Err(cmd::ERR_OUT_OF_MEMORY);
        }
        pixels.resize(width as usize * height as usize, 0);
        self.host_memory += bytes;
        self.resources.insert(
            id,
            Resource {
                width,
                height,
                format,
                pixels,
                backing: Vec::new(),
            },
        );
        ok()
    }

    fn unref(&mut self, r: &[u8]) -> Reply {
        let id = le32(r, HDR_LEN).ok_or(cmd::ERR_UNSPEC)?;
        let res = self
            .resources
            .remove(&id)
            .ok_or(cmd::ERR_INVALID_RESOURCE_ID)?;
        self.host_memory -= res.bytes();
        if self.scanout.is_some_and(|s| s.resource == id) {
            self.scanout = None;
            self.screen.blank();
        }
        if self.cursor.is_some_and(|c| c.0 == id) {
            self.cursor = None;
        }
        ok()
    }

    fn set_scanout(&mut self, r: &[u8]) -> Reply {
        let (rect, scanout, id) = (|| {
            Some((
                rect_at(r, HDR_LEN)?,
                le32(r, HDR_LEN + 16)?,
                le32(r, HDR_LEN + 20)?,
            ))
        })()
        .ok_or(cmd::ERR_UNSPEC)?;
        if scanout != 0 {
            return Err(cmd::ERR_INVALID_SCANOUT_ID);
        }
        if id == 0 {
            self.scanout = None;
            self.screen.blank();
            return ok();
        }
        let res = self
            .resources
            .get(&id)
            .ok_or(cmd::ERR_INVALID_RESOURCE_ID)?;
        if rect.is_empty()
            || !rect.inside(res.width, res.height)
            || rect.width > MAX_SCANOUT.0
            || rect.height > MAX_SCANOUT.1
        {
            return Err(cmd::ERR_INVALID_PARAMETER);
        }
        self.scanout = Some(Scanout { resource: id, rect });
        let all = Rect {
            x: 0,
            y: 0,
            width: rect.width,
            height: rect.height,
        };
        self.screen
            .show(res, (rect.x, rect.y), (rect.width, rect.height), all);
        ok()
    }

    fn flush(&mut self, r: &[u8]) -> Reply {
        let (rect, id) =
            (|| Some((rect_at(r, HDR_LEN)?, le32(r, HDR_LEN + 16)?)))().ok_or(cmd::ERR_UNSPEC)?;
        let res = self
            .resources
            .get(&id)
            .ok_or(cmd::ERR_INVALID_RESOURCE_ID)?;
        if !rect.inside(res.width, res.height) {
            return Err(cmd::ERR_INVALID_PARAMETER);
        }
        let Some(s) = self.scanout.filter(|s| s.resource == id) else {
            return ok();
        };
        // The flushed part of the scanout, in scanout coordinates.
        let left = rect.x.max(s.rect.x);
        let top = rect.y.max(s.rect.y);
        let right = (rect.x + rect.width).min(s.rect.x + s.rect.width);
        let bottom = (rect.y + rect.height).min(s.rect.y + s.rect.height);
        if left < right && top < bottom {
            let damage = Rect {
                x: left - s.rect.x,
                y: top - s.rect.y,
                width: right - left,
                height: bottom - top,
            };
            self.screen.show(
                res,
                (s.rect.x, s.rect.y),
                (s.rect.width, s.rect.height),
                damage,
            );
        }
        ok()
    }

    fn transfer(&mut self, mem: &GuestMemoryMmap, r: &[u8]) -> Reply {
        let (rect, offset, id) = (|| {
            Some((
                rect_at(r, HDR_LEN)?,
                le64(r, HDR_LEN + 16)?,
                le32(r, HDR_LEN + 24)?,
            ))
        })()
        .ok_or(cmd::ERR_UNSPEC)?;
        let res = self
            .resources
            .get_mut(&id)
            .ok_or(cmd::ERR_INVALID_RESOURCE_ID)?;
        if res.backing.is_empty() {
            return Err(cmd::ERR_UNSPEC);
        }
        if !rect.inside(res.width, res.height) {
            return Err(cmd::ERR_INVALID_PARAMETER);
        }
        let stride = u64::from(res.width) * 4;
        let format = res.format;
        // Whole rows: one read for the whole rectangle.
        let (rows_at_once, runs) = if rect.x == 0 && rect.width == res.width {
            (rect.height, 1)
        } else {
            (1, rect.height)
        };
        for run in 0..runs {
            let Some(src) = u64::from(run)
                .checked_mul(stride)
                .and_then(|o| o.checked_add(offset))
            else {
                return Err(cmd::ERR_INVALID_PARAMETER);
            };
            let first = (rect.y + run) as usize * res.width as usize + rect.x as usize;
            let n = rect.width as usize * rows_at_once as usize;
            let Some(dst) = res.pixels.get_mut(first..first + n) else {
                return Err(cmd::ERR_INVALID_PARAMETER);
            };
            // Straight from guest memory into the resource, then converted where it lies (a
            // failed read leaves what it got, converted too: the guest's own picture).
            let read = read_backing(&res.backing, mem, src, as_bytes_mut(dst));
            format.convert(dst);
            if !read {
                return Err(cmd::ERR_UNSPEC);
            }
        }
        ok()
    }

    fn attach(&mut self, mem: &GuestMemoryMmap, r: &[u8]) -> Reply {
        let count = le32(r, HDR_LEN + 4).ok_or(cmd::ERR_UNSPEC)?;
        let (_, res) = self.resource(r)?;
        if count == 0 || count > MAX_BACKING_ENTRIES || !res.backing.is_empty() {
            return Err(cmd::ERR_UNSPEC);
        }
        let mut backing = Vec::with_capacity(count as usize);
        let mut offset = 0u64;
        for i in 0..count as usize {
            let at = HDR_LEN + 8 + 16 * i;
            let (addr, len) =
                (|| Some((le64(r, at)?, le32(r, at + 8)?)))().ok_or(cmd::ERR_UNSPEC)?;
            let len = u64::from(len);
            if len == 0 {
                continue;
            }
            // The whole entry inside guest memory (the reads check again).
            if !mem.check_range(GuestAddress(addr), len as usize) {
                return Err(cmd::ERR_UNSPEC);
            }
            backing.push(Backing {
                offset,
                addr: GuestAddress(addr),
                len,
            });
            offset += len;
        }
        if backing.is_empty() {
            return Err(cmd::ERR_UNSPEC);
        }
        res.backing = backing;
        ok()
    }

    fn detach(&mut self, r: &[u8]) -> Reply {
        let (_, res) = self.resource(r)?;
        if res.backing.is_empty() {
            return Err(cmd::ERR_UNSPEC);
        }
        res.backing = Vec::new();
        ok()
    }

    /// The cursor is the host's own pointer (the tablet moves it), so the guest's cursor image
    /// is checked and remembered, not drawn.
    fn cursor(&mut self, kind: u32, r: &[u8]) {
        let (Some(scanout), Some(id)) = (le32(r, HDR_LEN), le32(r, HDR_LEN + 16)) else {
            return;
        };
        if scanout != 0 || kind != cmd::UPDATE_CURSOR {
            return;
        }
        self.cursor = match id {
            0 => None,
            id => self
                .resources
                .get(&id)
                .filter(|c| c.width <= 64 && c.height <= 64)
                .map(|c| (id, c.width, c.height)),
        };
    }

    /// Forget every resource and blank the screen (device reset).
    pub fn reset(&mut self) {
        self.resources.clear();
        self.host_memory = 0;
        self.scanout = None;
        self.cursor = None;
        self.screen.blank();
    }
}

/// Read a chain's device-readable bytes, at most [`MAX_REQUEST`] of them, into `out`; the
/// chain itself is left for the response.
fn read_request<M>(
    mem: &GuestMemoryMmap,
    chain: &virtio_queue::DescriptorChain<M>,
    out: &mut Vec<u8>,
) where
    M: std::ops::Deref<Target = GuestMemoryMmap> + Clone,
{
    out.clear();
    for d in chain.clone().readable() {
        let n = (d.len() as usize).min(MAX_REQUEST - out.len());
        let at = out.len();
        out.resize(at + n, 0);
        if mem.read_slice(&mut out[at..], d.addr()).is_err() {
            out.truncate(at);
            return;
        }
        if out.len() == MAX_REQUEST {
            return;
        }
    }
}

/// Write `data` into a chain's device-writable descriptors; returns the bytes written.
fn write_response<M>(
    mem: &GuestMemoryMmap,
    chain: virtio_queue::DescriptorChain<M>,
    data: &[u8],
) -> u32
where
    M: std::ops::Deref<Target = GuestMemoryMmap>,
{
    let mut done = 0usize;
    for d in chain.writable() {
        if done == data.len() {
            break;
        }
        let n = (d.len() as usize).min(data.len() - done);
        if mem.write_slice(&data[done..done + n], d.addr()).is_err() {
            break;
        }
        done += n;
    }
    done as u32
}

/// A request's and a response's bytes, reused from one request to the next.
#[derive(Debug, Default)]
pub struct Buffers {
    request: Vec<u8>,
    response: Vec<u8>,
}

/// Serve every available chain of a control or cursor queue with `gpu`; false when the driver
/// broke the ring (the queue is then served no more until a reset).
pub fn serve(
    queue: &mut virtio_queue::Queue,
    mem: &GuestMemoryMmap,
    interrupt: &dyn super::Interrupt,
    index: u16,
    gpu: &mut Gpu2d,
    buffers: &mut Buffers,
) -> bool {
    let Buffers { request, response } = buffers;
    serve_queue(queue, mem, interrupt, index, |mem, chain| {
        read_request(mem, &chain, request);
        gpu.process(mem, request, response);
        if response.is_empty() {
            return 0;
        }
        write_response(mem, chain, response)
    })
}

/// The thread serving both queues (control and cursor) in order.
struct GpuWorker {
    queues: Vec<super::ActiveQueue>,
    /// Whether each queue is still served (false once the driver broke it).
    serving: Vec<bool>,
    state: Arc<Mutex<Gpu2d>>,
    mem: GuestMemoryMmap,
    interrupt: Arc<dyn super::Interrupt>,
    buffers: Buffers,
}

impl GpuWorker {
    fn serve(&mut self, i: usize) {
        let Some(q) = self.queues.get_mut(i) else {
            return;
        };
        let mut gpu = lock(&self.state);
        self.serving[i] = serve(
            &mut q.queue,
            &self.mem,
            self.interrupt.as_ref(),
            q.index,
            &mut gpu,
            &mut self.buffers,
        );
    }

    fn run(&mut self, kill: &vmm_sys_util::eventfd::EventFd) {
        use std::os::fd::AsRawFd;
        for i in 0..self.queues.len() {
            self.serve(i);
        }
        // Two queues: control and cursor.
        let mut fds = [(-1, false); 2];
        let mut ready = [false; 2];
        let n = self.queues.len().min(fds.len());
        loop {
            for ((f, q), s) in fds.iter_mut().zip(&self.queues).zip(&self.serving) {
                *f = (q.notify.as_raw_fd(), *s);
            }
            if !super::wait_ready(kill, &fds[..n], &mut ready[..n]) {
                return;
            }
            for (i, r) in ready[..n].iter().enumerate() {
                if *r {
                    let _ = self.queues[i].notify.read();
                    self.serve(i);
                }
            }
        }
    }
}

/// A virtio-gpu device (2D, one scanout, EDID).
pub struct Gpu {
    state: Arc<Mutex<Gpu2d>>,
    config: [u8; 16],
    worker: Option<QueueWorker>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu").finish_non_exhaustive()
    }
}

impl Gpu {
    /// A device whose scanout the window shows through `screen`.
    pub fn new(screen: Arc<Screen>) -> Gpu {
        let mut config = [0u8; 16];
        // events_read, events_clear, num_scanouts = 1, num_capsets = 0.
        config[8..12].copy_from_slice(&1u32.to_le_bytes());
        Gpu {
            state: Arc::new(Mutex::new(Gpu2d::new(screen))),
            config,
            worker: None,
        }
    }
}

impl VirtioDevice for Gpu {
    fn device_type(&self) -> u16 {
        virtio_bindings::virtio_ids::VIRTIO_ID_GPU as u16
    }

    fn pci_class(&self) -> u32 {
        // Display controller, other: a VGA class would make firmware expect VGA registers.
        0x03_80_00
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        F_EDID
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // events_clear (4..8) clears bits of events_read (0..4); no event is ever raised.
        if offset == 4 && data.len() == 4 {
            for (c, d) in self.config[..4].iter_mut().zip(data) {
                *c &= !d;
            }
        }
    }

    fn activate(&mut self, a: Activation) -> Result<(), VirtioError> {
        self.reset();
        let mut queues = a.queues;
        queues.sort_by_key(|q| q.index);
        let mut w = GpuWorker {
            queues,
            serving: Vec::new(),
            state: self.state.clone(),
            mem: a.mem,
            interrupt: a.interrupt,
            buffers: Buffers::default(),
        };
        w.serving = vec![true; w.queues.len()];
        let worker = QueueWorker::spawn_loop("virtio-gpu".into(), move |kill| w.run(&kill))
            .map_err(VirtioError::Thread)?;
        self.worker = Some(worker);
        Ok(())
    }

    fn reset(&mut self) {
        self.worker = None;
        lock(&self.state).reset();
    }
}
