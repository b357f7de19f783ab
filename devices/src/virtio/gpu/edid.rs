//! The EDID the display reports (`GET_EDID`): one EDID 1.4 base block whose preferred detailed
//! timing is the display's size at 60 Hz, so a guest's mode list starts with it.

/// An EDID 1.4 base block for a `width` x `height` display (each side at most 4095, the most
/// a detailed timing holds).
pub fn block(width: u32, height: u32) -> [u8; 128] {
    let w = width.clamp(1, 4095);
    let h = height.clamp(1, 4095);
    let mut e = [0u8; 128];
    e[..8].copy_from_slice(&[0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00]);
    // Manufacturer "RVM" (three 5-bit letters, A = 1), product 1, no serial number.
    let id: u16 = (18 << 10) | (22 << 5) | 13;
    e[8..10].copy_from_slice(&id.to_be_bytes());
    e[10] = 1;
    // Model year 2024, EDID 1.4.
    e[16] = 0xff;
    e[17] = (2024 - 1990) as u8;
    e[18] = 1;
    e[19] = 4;
    // Digital input, 8 bits per colour; the size in cm at 96 pixels per inch.
    e[20] = 0xa0;
    let (w_mm, h_mm) = (w * 254 / 960, h * 254 / 960);
    e[21] = (w_mm / 10).clamp(1, 255) as u8;
    e[22] = (h_mm / 10).clamp(1, 255) as u8;
    // Gamma 2.2; sRGB default colour space, the preferred timing is the native mode.
    e[23] = 120;
    e[24] = 0x06;
    // sRGB chromaticity.
    e[25..35].copy_from_slice(&[0xee, 0x91, 0xa3, 0x54, 0x4c, 0x99, 0x26, 0x0f, 0x50, 0x54]);
    // Established timings 640x480, 800x600 and 1024x768 at 60 Hz (modes a guest may pick);
    // the eight standard timings unused.
    e[35] = 0x21;
    e[36] = 0x08;
    for s in e[38..54].iter_mut() {
        *s = 1;
    }
    e[54..72].copy_from_slice(&detailed_timing(w, h, w_mm, h_mm));
    e[72..90].copy_from_slice(&text_descriptor(0xfc, b"rvmspawn"));
    e[90..108].copy_from_slice(&text_descriptor(0xfe, b"virtio-gpu"));
    // Descriptor 4: dummy.
    e[111] = 0x10;
    let sum = e[..127].iter().fold(0u8, |s, b| s.wrapping_add(*b));
    e[127] = 0u8.wrapping_sub(sum);
    e
}

/// A detailed timing with reduced blanking (CVT-RB-like) at 60 Hz.
fn detailed_timing(w: u32, h: u32, w_mm: u32, h_mm: u32) -> [u8; 18] {
    let (hblank, hfront, hsync) = (160u32, 48u32, 32u32);
    let (vblank, vfront, vsync) = (30u32, 3u32, 6u32);
    let clock = ((w + hblank) * (h + vblank) * 60 / 10_000).min(u32::from(u16::MAX));
    let (w_mm, h_mm) = (w_mm.min(4095), h_mm.min(4095));
    let mut d = [0u8; 18];
    d[..2].copy_from_slice(&(clock as u16).to_le_bytes());
    d[2] = w as u8;
    d[3] = hblank as u8;
    d[4] = (((w >> 8) & 0xf) << 4 | ((hblank >> 8) & 0xf)) as u8;
    d[5] = h as u8;
    d[6] = vblank as u8;
    d[7] = (((h >> 8) & 0xf) << 4 | ((vblank >> 8) & 0xf)) as u8;
    d[8] = hfront as u8;
    d[9] = hsync as u8;
    d[10] = ((vfront & 0xf) << 4 | (vsync & 0xf)) as u8;
    d[11] = 0;
    d[12] = w_mm as u8;
    d[13] = h_mm as u8;
    d[14] = (((w_mm >> 8) & 0xf) << 4 | ((h_mm >> 8) & 0xf)) as u8;
    // Digital separate sync, both polarities positive.
    d[17] = 0x1e;
    d
}

/// A display descriptor holding up to 13 bytes of text, ended by a newline and padded.
fn text_descriptor(tag: u8, text: &[u8]) -> [u8; 18] {
    let mut d = [0u8; 18];
    d[3] = tag;
    let mut body = [b' '; 13];
    let n = text.len().min(12);
    body[..n].copy_from_slice(&text[..n]);
    body[n] = b'\n';
    d[5..].copy_from_slice(&body);
    d
}
