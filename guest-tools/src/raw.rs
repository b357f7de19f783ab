//! One raw Ethernet frame of a chosen length, for the network tests' oversized-frame check: a
//! guest sends the longest frame its kernel lets out, and the VMM must drop what its back end
//! cannot carry while the network keeps working.

/// 802.1Q: the packet socket allows 4 more bytes than MTU + header when the frame is tagged.
pub const ETHERTYPE_VLAN: u16 = 0x8100;
/// IEEE 802 local experimental EtherType: nobody on the other side acts on it.
pub const ETHERTYPE_EXPERIMENTAL: u16 = 0x88b5;
/// Destination, source, tag type, tag control, inner type.
pub const HEADER_LEN: usize = 6 + 6 + 2 + 2 + 2;
/// The largest frame built: well above any MTU a Linux guest can set (65535 + 18).
pub const MAX_FRAME: usize = 1 << 20;
/// What the payload repeats.
const FILL: &[u8] = b"RVMSPAWN-BIGFRAME-";

/// A MAC address written `xx:xx:xx:xx:xx:xx` (hex, either case).
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.trim().split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// A frame of exactly `len` bytes from `src` to `dst`, tagged 802.1Q (VLAN 0, priority 0) with
/// the experimental inner type, and a repeated ASCII payload.
pub fn build(dst: [u8; 6], src: [u8; 6], len: usize) -> Result<Vec<u8>, String> {
    if !(HEADER_LEN..=MAX_FRAME).contains(&len) {
        return Err(format!(
            "a frame has {HEADER_LEN} to {MAX_FRAME} bytes here, not {len}"
        ));
    }
    let mut frame = Vec::with_capacity(len);
    frame.extend_from_slice(&dst);
    frame.extend_from_slice(&src);
    frame.extend_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
    frame.extend_from_slice(&[0, 0]);
    frame.extend_from_slice(&ETHERTYPE_EXPERIMENTAL.to_be_bytes());
    frame.extend(FILL.iter().copied().cycle().take(len - HEADER_LEN));
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs() {
        assert_eq!(
            parse_mac("52:54:00:AB:cd:0f\n"),
            Some([0x52, 0x54, 0x00, 0xab, 0xcd, 0x0f])
        );
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:0f:00",
            "5:54:00:ab:cd:0f",
            "zz:54:00:ab:cd:0f",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }

    #[test]
    fn frame_layout_and_length() {
        let dst = [0xff; 6];
        let src = [2, 0, 0, 0, 0, 1];
        let f = build(dst, src, 65553).unwrap();
        assert_eq!(f.len(), 65553);
        assert_eq!(&f[..6], &dst);
        assert_eq!(&f[6..12], &src);
        assert_eq!(&f[12..14], &[0x81, 0x00]);
        assert_eq!(&f[14..16], &[0, 0]);
        assert_eq!(&f[16..18], &[0x88, 0xb5]);
        assert_eq!(&f[18..18 + FILL.len()], FILL);
        assert_eq!(build(dst, src, HEADER_LEN).unwrap().len(), HEADER_LEN);
        assert!(build(dst, src, HEADER_LEN - 1).is_err());
        assert!(build(dst, src, MAX_FRAME + 1).is_err());
    }
}
