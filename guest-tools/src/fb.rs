//! `fb`: the guest side of the graphical console's picture tests. It waits for the virtio-gpu
//! framebuffer (the kernel's DRM fbdev emulation: `/sys/class/graphics/fbN/name` is
//! `virtio_gpudrmfb`), puts the console in graphics mode so that the kernel's framebuffer
//! console stops drawing over the picture, draws four coloured quadrants and then, if asked,
//! whole-screen frames of known colours, printing what it drew. Only 32 bits per pixel.
//!
//! It writes with `pwrite` on `/dev/fbN`, never through `mmap`: a write through fbdev marks
//! the damage that the DRM fbdev helper flushes to the device.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::line;
use crate::sys;

/// How long to wait for the framebuffer to appear.
pub const DEVICE_WAIT: Duration = Duration::from_secs(20);
/// What the picture's quadrants are, 0xRRGGBB: top left, top right, bottom left, bottom right.
pub const QUADRANTS: [u32; 4] = [0xff0000, 0x00ff00, 0x0000ff, 0xffffff];
/// The colours of the frames, in turn (none of them in the picture, each unlike the one before).
pub const FRAME_COLOURS: [u32; 8] = [
    0x800000, 0x008000, 0x000080, 0x808000, 0x008080, 0x800080, 0x808080, 0xff8000,
];
/// The pause after each frame, and after the picture when frames follow (the host measures
/// from a frame's line to its window showing the colour; in the emulated test host that takes
/// hundreds of milliseconds, and a frame must not overtake the one being measured).
pub const FRAME_PAUSE: Duration = Duration::from_millis(1500);

/// Where the visible picture is in the framebuffer and how a pixel is laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Geometry {
    pub width: usize,
    pub height: usize,
    /// Bytes from one line to the next.
    pub stride: usize,
    /// Byte offset of the visible picture's first pixel (panning).
    pub origin: u64,
    /// Bit offsets of red, green and blue in a 32-bit pixel (8 bits each).
    pub shifts: [u32; 3],
}

impl Geometry {
    /// From the screen information; an error for anything but 32 bits per pixel with 8-bit
    /// colours, or a picture that does not fit in the framebuffer's memory.
    pub fn new(var: &sys::FbVarScreeninfo, fix: &sys::FbFixScreeninfo) -> Result<Geometry, String> {
        if var.bits_per_pixel != 32 {
            return Err(format!(
                "unsupported depth: {} bits per pixel (only 32)",
                var.bits_per_pixel
            ));
        }
        let colours = [var.red, var.green, var.blue];
        if colours.iter().any(|c| c.length != 8 || c.offset > 24) {
            return Err(format!(
                "unsupported pixel format: red {}/{}, green {}/{}, blue {}/{} (offset/length)",
                var.red.offset,
                var.red.length,
                var.green.offset,
                var.green.length,
                var.blue.offset,
                var.blue.length
            ));
        }
        let g = Geometry {
            width: var.xres as usize,
            height: var.yres as usize,
            stride: fix.line_length as usize,
            origin: u64::from(var.yoffset) * u64::from(fix.line_length)
                + u64::from(var.xoffset) * 4,
            shifts: colours.map(|c| c.offset),
        };
        if g.width == 0 || g.height == 0 || g.stride < g.width * 4 {
            return Err(format!(
                "unusable geometry: {}x{}, stride {}",
                g.width, g.height, g.stride
            ));
        }
        let end = g.origin + ((g.height - 1) * g.stride + g.width * 4) as u64;
        if fix.smem_len != 0 && end > u64::from(fix.smem_len) {
            return Err(format!(
                "the picture ({}x{} from byte {}, stride {}) ends at byte {end}, past the {} bytes of the framebuffer",
                g.width, g.height, g.origin, g.stride, fix.smem_len
            ));
        }
        Ok(g)
    }

    /// The pixel's bytes in memory (little-endian x86) for colour 0xRRGGBB.
    pub fn pixel(&self, rgb: u32) -> [u8; 4] {
        let [r, g, b] = [rgb >> 16 & 0xff, rgb >> 8 & 0xff, rgb & 0xff];
        ((r << self.shifts[0]) | (g << self.shifts[1]) | (b << self.shifts[2])).to_le_bytes()
    }

    /// Whether the visible lines follow each other without a gap: one write does them all.
    fn contiguous(&self) -> bool {
        self.stride == self.width * 4
    }
}

/// A picture of the visible area, `width * 4` bytes a line, filled by `colour(x, y)` (0xRRGGBB),
/// into `buf` (reused from frame to frame).
pub fn render(g: &Geometry, buf: &mut Vec<u8>, colour: impl Fn(usize, usize) -> u32) {
    let row = g.width * 4;
    buf.resize(row * g.height, 0);
    for (y, line) in buf.chunks_exact_mut(row).enumerate() {
        for (x, px) in line.chunks_exact_mut(4).enumerate() {
            px.copy_from_slice(&g.pixel(colour(x, y)));
        }
    }
}

/// One colour everywhere: the first line is built, the others copied from it.
pub fn render_fill(g: &Geometry, buf: &mut Vec<u8>, rgb: u32) {
    let row = g.width * 4;
    buf.resize(row * g.height, 0);
    let px = g.pixel(rgb);
    for p in buf[..row].chunks_exact_mut(4) {
        p.copy_from_slice(&px);
    }
    for y in 1..g.height {
        buf.copy_within(..row, y * row);
    }
}

/// The four quadrants of `QUADRANTS`.
pub fn quadrant(g: &Geometry, x: usize, y: usize) -> u32 {
    let right = usize::from(x >= g.width / 2);
    let bottom = usize::from(y >= g.height / 2);
    QUADRANTS[bottom * 2 + right]
}

/// Write the picture `buf` (from `render`) to the framebuffer: one `pwrite` when the lines are
/// contiguous, one a line otherwise.
pub fn write_picture(fb: &File, g: &Geometry, buf: &[u8]) -> std::io::Result<()> {
    if g.contiguous() {
        return fb.write_all_at(buf, g.origin);
    }
    let row = g.width * 4;
    for (y, line) in buf.chunks_exact(row).enumerate() {
        fb.write_all_at(line, g.origin + (y * g.stride) as u64)?;
    }
    Ok(())
}

/// Ask fbdev's deferred I/O to flush now (`fsync`); a framebuffer without it answers EINVAL,
/// which is fine: its writes need no flush.
fn flush(fb: &File) -> std::io::Result<()> {
    match fb.sync_all() {
        Err(e) if e.raw_os_error() == Some(22) => Ok(()), // EINVAL
        r => r,
    }
}

/// Every framebuffer (`fbN`, not `fbcon`) with its name (`fix.id`).
fn framebuffers() -> Vec<(String, String)> {
    crate::class_devices("/sys/class/graphics", "name", |entry| {
        entry
            .strip_prefix("fb")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// The virtio-gpu framebuffer (`fbN`, its name, its device node) once it is there, waiting up
/// to `wait`; `Err` lists the framebuffers there are.
fn wait_for_framebuffer(wait: Duration) -> Result<(String, String, PathBuf), String> {
    let found = crate::wait_for(wait, Duration::from_millis(10), || {
        let (dev, name) = framebuffers()
            .into_iter()
            .find(|(_, name)| name.contains("virtio"))?;
        let node = Path::new("/dev").join(&dev);
        node.exists().then_some((dev, name, node))
    });
    found.ok_or_else(|| {
        format!(
            "no virtio-gpu framebuffer (/sys/class/graphics/fb*/name with \"virtio\" and its /dev node) after {} s; framebuffers: {}",
            wait.as_secs(),
            crate::listing(&framebuffers())
        )
    })
}

/// `fb [--frames N]`: the picture, then N frames. Lines:
/// `RVMSPAWN-FB-DEVICE=fbN NAME`, `RVMSPAWN-FB-KDSETMODE=ok|WHAT: ERROR`,
/// `RVMSPAWN-FB-MODE=WxH`, `RVMSPAWN-FB-BPP=32`, `RVMSPAWN-FB-STRIDE=N`, `RVMSPAWN-FB-DRAWN=1`,
/// then per frame `RVMSPAWN-FB-FRAME=I,RRGGBB`; `RVMSPAWN-FB-ERROR=WHAT: ERROR` ends it early.
/// True when everything was drawn.
pub fn run(frames: u64) -> bool {
    match draw(frames) {
        Ok(()) => true,
        Err(e) => {
            line(&format!("RVMSPAWN-FB-ERROR={e}"));
            false
        }
    }
}

fn draw(frames: u64) -> Result<(), String> {
    let (dev, name, node) = wait_for_framebuffer(DEVICE_WAIT)?;
    line(&format!("RVMSPAWN-FB-DEVICE={dev} {name}"));
    let fb = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&node)
        .map_err(|e| format!("open {}: {e}", node.display()))?;
    // Before drawing, or the console's blinking cursor paints over the picture.
    let kd = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(sys::O_NOCTTY)
        .open("/dev/tty0")
        .map_err(|e| format!("open /dev/tty0: {e}"))
        .and_then(|tty| {
            sys::kd_set_graphics(&tty).map_err(|e| format!("ioctl KDSETMODE on /dev/tty0: {e}"))
        });
    match kd {
        Ok(()) => line("RVMSPAWN-FB-KDSETMODE=ok"),
        Err(e) => line(&format!("RVMSPAWN-FB-KDSETMODE={e}")),
    }
    let (var, fix) = sys::fb_screeninfo(&fb).map_err(|e| format!("{}: {e}", node.display()))?;
    line(&format!("RVMSPAWN-FB-MODE={}x{}", var.xres, var.yres));
    line(&format!("RVMSPAWN-FB-BPP={}", var.bits_per_pixel));
    line(&format!("RVMSPAWN-FB-STRIDE={}", fix.line_length));
    let g = Geometry::new(&var, &fix)?;
    let write = |buf: &[u8]| {
        write_picture(&fb, &g, buf)
            .and_then(|()| flush(&fb))
            .map_err(|e| format!("write {}: {e}", node.display()))
    };
    let mut buf = Vec::new();
    render(&g, &mut buf, |x, y| quadrant(&g, x, y));
    write(&buf)?;
    line("RVMSPAWN-FB-DRAWN=1");
    // The picture stays up as long as a frame does before the frames replace it.
    if frames > 0 {
        std::thread::sleep(FRAME_PAUSE);
    }
    for i in 1..=frames {
        let rgb = FRAME_COLOURS[((i - 1) % FRAME_COLOURS.len() as u64) as usize];
        render_fill(&g, &mut buf, rgb);
        write(&buf)?;
        line(&format!("RVMSPAWN-FB-FRAME={i},{rgb:06x}"));
        std::thread::sleep(FRAME_PAUSE);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn var(xres: u32, yres: u32, shifts: [u32; 3]) -> sys::FbVarScreeninfo {
        let field = |offset| sys::FbBitfield {
            offset,
            length: 8,
            msb_right: 0,
        };
        let mut v = sys::FbVarScreeninfo::default();
        (v.xres, v.yres, v.xres_virtual, v.yres_virtual) = (xres, yres, xres, yres);
        v.bits_per_pixel = 32;
        (v.red, v.green, v.blue) = (field(shifts[0]), field(shifts[1]), field(shifts[2]));
        v
    }

    fn fix(stride: u32, len: u32) -> sys::FbFixScreeninfo {
        let mut f = sys::FbFixScreeninfo::default();
        (f.line_length, f.smem_len) = (stride, len);
        f
    }

    #[test]
    fn xrgb8888_pixels_are_bgrx_in_memory() {
        let g = Geometry::new(&var(4, 2, [16, 8, 0]), &fix(16, 32)).unwrap();
        assert_eq!(g.pixel(0xff0000), [0, 0, 0xff, 0]);
        assert_eq!(g.pixel(0x00ff00), [0, 0xff, 0, 0]);
        assert_eq!(g.pixel(0x0000ff), [0xff, 0, 0, 0]);
        assert_eq!(g.pixel(0x123456), [0x56, 0x34, 0x12, 0]);
        // XBGR8888, should a device have it.
        let g = Geometry::new(&var(4, 2, [0, 8, 16]), &fix(16, 32)).unwrap();
        assert_eq!(g.pixel(0x123456), [0x12, 0x34, 0x56, 0]);
    }

    #[test]
    fn the_quadrants() {
        let g = Geometry::new(&var(4, 2, [16, 8, 0]), &fix(16, 32)).unwrap();
        let mut buf = Vec::new();
        render(&g, &mut buf, |x, y| quadrant(&g, x, y));
        let red = [0, 0, 0xff, 0];
        let green = [0, 0xff, 0, 0];
        let blue = [0xff, 0, 0, 0];
        let white = [0xff, 0xff, 0xff, 0];
        let want: Vec<u8> = [red, red, green, green, blue, blue, white, white].concat();
        assert_eq!(buf, want);
    }

    #[test]
    fn fill_and_frame_colours() {
        let g = Geometry::new(&var(3, 3, [16, 8, 0]), &fix(12, 36)).unwrap();
        let mut buf = vec![1; 5];
        render_fill(&g, &mut buf, 0x800080);
        assert_eq!(buf, [0x80, 0, 0x80, 0].repeat(9));
        for (i, c) in FRAME_COLOURS.iter().enumerate() {
            assert!(!QUADRANTS.contains(c), "{c:06x}");
            assert_ne!(*c, FRAME_COLOURS[(i + 1) % FRAME_COLOURS.len()]);
        }
    }

    #[test]
    fn geometry_checks() {
        assert!(
            Geometry::new(&var(4, 2, [16, 8, 0]), &fix(16, 32))
                .unwrap()
                .contiguous()
        );
        let padded = Geometry::new(&var(4, 2, [16, 8, 0]), &fix(20, 40)).unwrap();
        assert!(!padded.contiguous());
        let mut v = var(4, 2, [16, 8, 0]);
        v.yoffset = 2;
        assert_eq!(Geometry::new(&v, &fix(16, 64)).unwrap().origin, 32);
        assert!(
            Geometry::new(&v, &fix(16, 32))
                .unwrap_err()
                .contains("past the 32 bytes")
        );
        v.bits_per_pixel = 16;
        assert!(
            Geometry::new(&v, &fix(16, 64))
                .unwrap_err()
                .contains("16 bits per pixel")
        );
        assert!(Geometry::new(&var(4, 2, [16, 8, 0]), &fix(12, 32)).is_err());
        let mut v = var(4, 2, [16, 8, 0]);
        v.green.length = 6;
        assert!(
            Geometry::new(&v, &fix(16, 32))
                .unwrap_err()
                .contains("pixel format")
        );
    }

    #[test]
    fn padded_lines_are_written_one_by_one() {
        let dir = std::env::temp_dir().join(format!("rvmspawn-fb-test-{}", std::process::id()));
        let g = Geometry::new(&var(2, 2, [16, 8, 0]), &fix(12, 24)).unwrap();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&dir)
            .unwrap();
        file.write_all_at(&[0xee; 24], 0).unwrap();
        let mut buf = Vec::new();
        render(&g, &mut buf, |x, y| quadrant(&g, x, y));
        write_picture(&file, &g, &buf).unwrap();
        let got = std::fs::read(&dir).unwrap();
        std::fs::remove_file(&dir).unwrap();
        let pad = [0xee; 4];
        let want: Vec<u8> = [
            [0, 0, 0xff, 0],
            [0, 0xff, 0, 0],
            pad,
            [0xff, 0, 0, 0],
            [0xff, 0xff, 0xff, 0],
            pad,
        ]
        .concat();
        assert_eq!(got, want);
    }
}
