use vm_memory::{Bytes, GuestAddress};

use super::*;

const MEM: u64 = 0x10000;
/// Where the tests put DMA descriptors.
const DESC: u64 = 0x1000;

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap()
}

fn select(fw: &mut FwCfg, key: u16) {
    fw.write(0, &key.to_le_bytes());
}

fn pio_read(fw: &mut FwCfg, n: usize) -> Vec<u8> {
    (0..n)
        .map(|_| {
            let mut b = [0u8];
            fw.read(1, &mut b);
            b[0]
        })
        .collect()
}

fn descriptor(control: u32, length: u32, address: u64) -> Vec<u8> {
    let mut d = Vec::new();
    d.extend_from_slice(&control.to_be_bytes());
    d.extend_from_slice(&length.to_be_bytes());
    d.extend_from_slice(&address.to_be_bytes());
    d
}

fn control_at(mem: &GuestMemoryMmap, at: u64) -> u32 {
    let mut c = [0u8; 4];
    mem.read_slice(&mut c, GuestAddress(at)).unwrap();
    u32::from_be_bytes(c)
}

/// Put a descriptor at `at`, start it the way OVMF does (high half, then low half) and return
/// the control word the device left there.
fn dma(
    fw: &mut FwCfg,
    mem: &GuestMemoryMmap,
    at: u64,
    control: u32,
    length: u32,
    addr: u64,
) -> u32 {
    mem.write_slice(&descriptor(control, length, addr), GuestAddress(at))
        .unwrap();
    fw.write(4, &((at >> 32) as u32).to_be_bytes());
    fw.write(8, &(at as u32).to_be_bytes());
    control_at(mem, at)
}

fn guest_bytes(mem: &GuestMemoryMmap, at: u64, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    mem.read_slice(&mut v, GuestAddress(at)).unwrap();
    v
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + 1) as u8).collect()
}

#[test]
fn signature_and_id_over_pio() {
    let mut fw = FwCfg::new(memory());
    select(&mut fw, KEY_SIGNATURE);
    assert_eq!(pio_read(&mut fw, 6), b"QEMU\0\0");
    select(&mut fw, KEY_ID);
    assert_eq!(pio_read(&mut fw, 4), [3, 0, 0, 0]);
    // Reads at the selector port read data too; the write-channel bit selects the same item.
    select(&mut fw, 0x4000 | KEY_SIGNATURE);
    let mut b = [0u8; 2];
    fw.read(0, &mut b);
    assert_eq!(&b, b"QE");
    // An absent item reads as zeroes; 8-bit writes to the selector do not select.
    select(&mut fw, 0x1234);
    fw.write(0, &[0]);
    assert_eq!(pio_read(&mut fw, 3), [0, 0, 0]);
    assert_eq!(fw.item_count(), 3);
}

#[test]
fn directory_lists_files_sorted_by_name() {
    let mut fw = FwCfg::new(memory());
    assert_eq!(fw.item(KEY_FILE_DIR), Some(&[0u8, 0, 0, 0][..]));
    assert_eq!(fw.add_file("etc/e820", vec![1; 20]), Ok(0x20));
    assert_eq!(fw.add_file("bootorder", vec![2; 5]), Ok(0x21));
    fw.add_item(KEY_NB_CPUS, 4u16.to_le_bytes().to_vec());
    assert_eq!(fw.add_file("etc/acpi/tables", vec![3; 100]), Ok(0x22));
    assert_eq!(fw.item_count(), 7);
    assert_eq!(fw.item(0x22).map(<[u8]>::len), Some(100));

    select(&mut fw, KEY_FILE_DIR);
    let dir = pio_read(&mut fw, 4 + 3 * 64);
    assert_eq!(&dir[..4], &[0, 0, 0, 3]);
    let expect = [
        ("bootorder", 5u32, 0x21u16),
        ("etc/acpi/tables", 100, 0x22),
        ("etc/e820", 20, 0x20),
    ];
    for (i, (name, size, key)) in expect.iter().enumerate() {
        let e = &dir[4 + i * 64..4 + (i + 1) * 64];
        assert_eq!(&e[..4], &size.to_be_bytes());
        assert_eq!(&e[4..6], &key.to_be_bytes());
        assert_eq!(&e[6..8], &[0, 0]);
        assert_eq!(&e[8..8 + name.len()], name.as_bytes());
        assert!(e[8 + name.len()..].iter().all(|&b| b == 0));
    }
    // Past the directory's end: zeroes.
    assert_eq!(pio_read(&mut fw, 2), [0, 0]);
}

#[test]
fn file_read_over_pio_and_dma() {
    let mem = memory();
    let mut fw = FwCfg::new(mem.clone());
    let data = pattern(200);
    let key = fw.add_file("etc/table-loader", data.clone()).unwrap();

    select(&mut fw, key);
    let got = pio_read(&mut fw, 202);
    assert_eq!(&got[..200], &data[..]);
    assert_eq!(&got[200..], &[0, 0]);

    // DMA past the item's end fills zeroes, and nothing beyond `length`.
    mem.write_slice(&[0xaa; 300], GuestAddress(0x2000)).unwrap();
    let control = CTL_SELECT | CTL_READ | (u32::from(key) << 16);
    assert_eq!(dma(&mut fw, &mem, DESC, control, 256, 0x2000), 0);
    let out = guest_bytes(&mem, 0x2000, 300);
    assert_eq!(&out[..200], &data[..]);
    assert!(out[200..256].iter().all(|&b| b == 0));
    assert!(out[256..].iter().all(|&b| b == 0xaa));
}

#[test]
fn skip_and_select_in_dma() {
    let mem = memory();
    let mut fw = FwCfg::new(mem.clone());
    let data = pattern(64);
    let key = fw.add_file("opt/x", data.clone()).unwrap();
    select(&mut fw, KEY_SIGNATURE);

    let sel = CTL_SELECT | (u32::from(key) << 16);
    assert_eq!(dma(&mut fw, &mem, DESC, sel | CTL_SKIP, 10, 0), 0);
    assert_eq!(dma(&mut fw, &mem, DESC, CTL_READ, 5, 0x2000), 0);
    assert_eq!(guest_bytes(&mem, 0x2000, 5), &data[10..15]);
    // The port interface continues where DMA stopped.
    assert_eq!(pio_read(&mut fw, 3), &data[15..18]);
    // Select alone: transfers nothing, succeeds, and starts the new item at 0.
    assert_eq!(dma(&mut fw, &mem, DESC, CTL_SELECT, 0, 0), 0);
    assert_eq!(pio_read(&mut fw, 4), b"QEMU");
    // A skip past the end stops at the end.
    assert_eq!(dma(&mut fw, &mem, DESC, sel | CTL_SKIP, u32::MAX, 0), 0);
    assert_eq!(pio_read(&mut fw, 2), [0, 0]);
}

#[test]
fn dma_outside_guest_memory() {
    let mem = memory();
    let mut fw = FwCfg::new(mem.clone());
    let key = fw.add_file("opt/x", pattern(64)).unwrap();
    let sel = CTL_SELECT | (u32::from(key) << 16);

    // Target beyond memory, straddling its end, or wrapping around: ERROR.
    assert_eq!(dma(&mut fw, &mem, DESC, sel | CTL_READ, 64, MEM), CTL_ERROR);
    assert_eq!(
        dma(&mut fw, &mem, DESC, sel | CTL_READ, 64, MEM - 32),
        CTL_ERROR
    );
    assert_eq!(
        dma(&mut fw, &mem, DESC, sel | CTL_READ, 64, u64::MAX - 8),
        CTL_ERROR
    );
    assert_eq!(dma(&mut fw, &mem, DESC, sel | CTL_SKIP, 8, u64::MAX), 0);

    // A descriptor outside memory: nothing to do and nothing breaks.
    fw.write(4, &1u32.to_be_bytes());
    fw.write(8, &0u32.to_be_bytes());
    fw.write(4, &u64::MAX.to_be_bytes());
    // A descriptor straddling the end: the reachable control word gets ERROR.
    mem.write_slice(&[0; 8], GuestAddress(MEM - 8)).unwrap();
    fw.write(4, &(MEM - 8).to_be_bytes());
    assert_eq!(control_at(&mem, MEM - 8), CTL_ERROR);

    // The device still works.
    assert_eq!(dma(&mut fw, &mem, DESC, sel | CTL_READ, 4, 0x2000), 0);
    assert_eq!(guest_bytes(&mem, 0x2000, 4), &pattern(64)[..4]);
}

#[test]
fn huge_length_does_not_allocate_or_hang() {
    let mem = memory();
    let mut fw = FwCfg::new(mem.clone());
    let key = fw.add_file("opt/x", pattern(64)).unwrap();
    let sel = CTL_SELECT | (u32::from(key) << 16);
    // 4 GiB of zero fill cannot fit in 64 KiB of memory: ERROR, after the item's bytes.
    assert_eq!(
        dma(&mut fw, &mem, DESC, sel | CTL_READ, u32::MAX, 0x2000),
        CTL_ERROR
    );
    assert_eq!(guest_bytes(&mem, 0x2000, 64), pattern(64));
    // Zero fill that fits is done in full, also for an absent item.
    mem.write_slice(&[0xaa; 0x8001], GuestAddress(0x4000))
        .unwrap();
    let absent = CTL_SELECT | (0x3000 << 16);
    assert_eq!(
        dma(&mut fw, &mem, DESC, absent | CTL_READ, 0x8000, 0x4000),
        0
    );
    let out = guest_bytes(&mem, 0x4000, 0x8001);
    assert!(out[..0x8000].iter().all(|&b| b == 0));
    assert_eq!(out[0x8000], 0xaa);
    // A huge write is refused before anything is copied.
    let file = fw.add_writable_file("opt/w", vec![0; 16]).unwrap();
    let wsel = CTL_SELECT | (u32::from(file) << 16);
    assert_eq!(
        dma(&mut fw, &mem, DESC, wsel | CTL_WRITE, u32::MAX, 0),
        CTL_ERROR
    );
    assert_eq!(fw.item(file), Some(&[0u8; 16][..]));
}

#[test]
fn writes_to_read_only_items_fail() {
    let mem = memory();
    let mut fw = FwCfg::new(mem.clone());
    let key = fw.add_file("etc/acpi/rsdp", vec![5; 20]).unwrap();
    mem.write_slice(&[9; 20], GuestAddress(0x2000)).unwrap();
    for k in [KEY_SIGNATURE, key, 0x3000] {
        let control = CTL_SELECT | CTL_WRITE | (u32::from(k) << 16);
        assert_eq!(dma(&mut fw, &mem, DESC, control, 4, 0x2000), CTL_ERROR);
    }
    assert_eq!(fw.item(KEY_SIGNATURE), Some(&b"QEMU"[..]));
    assert_eq!(fw.item(key), Some(&[5u8; 20][..]));
    // Port writes to the data register change nothing either.
    select(&mut fw, key);
    fw.write(1, &[0]);
    assert_eq!(fw.item(key), Some(&[5u8; 20][..]));
}

#[test]
fn writable_file_round_trip() {
    let mem = memory();
    let mut fw = FwCfg::new(mem.clone());
    let key = fw
        .add_writable_file("etc/smi/requested-features", vec![0; 8])
        .unwrap();
    let sel = CTL_SELECT | (u32::from(key) << 16);
    mem.write_slice(&[1, 2, 3, 4, 5, 6, 7, 8, 9], GuestAddress(0x2000))
        .unwrap();
    assert_eq!(dma(&mut fw, &mem, DESC, sel | CTL_WRITE, 8, 0x2000), 0);
    assert_eq!(fw.item(key), Some(&[1u8, 2, 3, 4, 5, 6, 7, 8][..]));
    select(&mut fw, key);
    assert_eq!(pio_read(&mut fw, 8), [1, 2, 3, 4, 5, 6, 7, 8]);

    // Partial write after a skip; a write past the end fails and changes nothing.
    assert_eq!(dma(&mut fw, &mem, DESC, sel | CTL_SKIP, 6, 0), 0);
    assert_eq!(dma(&mut fw, &mem, DESC, CTL_WRITE, 2, 0x2008), 0);
    assert_eq!(fw.item(key), Some(&[1u8, 2, 3, 4, 5, 6, 9, 0][..]));
    assert_eq!(
        dma(&mut fw, &mem, DESC, sel | CTL_WRITE, 9, 0x2000),
        CTL_ERROR
    );
    assert_eq!(fw.item(key), Some(&[1u8, 2, 3, 4, 5, 6, 9, 0][..]));
    // Writing from outside guest memory fails.
    assert_eq!(dma(&mut fw, &mem, DESC, sel | CTL_WRITE, 8, MEM), CTL_ERROR);
}

#[test]
fn dma_signature_reads() {
    let mut fw = FwCfg::new(memory());
    let mut b = [0u8; 8];
    fw.read(4, &mut b);
    assert_eq!(&b, b"QEMU CFG");
    assert_eq!(u64::from_be_bytes(b), DMA_SIGNATURE);
    let mut b = [0u8; 4];
    fw.read(8, &mut b);
    assert_eq!(&b, b" CFG");
    let mut b = [0u8; 2];
    fw.read(2, &mut b);
    assert_eq!(b, [0xff, 0xff]);
}

#[test]
fn dma_above_4g_and_64_bit_start() {
    let mem = GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), MEM as usize),
        (GuestAddress(1 << 32), MEM as usize),
    ])
    .unwrap();
    let mut fw = FwCfg::new(mem.clone());
    let high = (1u64 << 32) + 0x100;
    // The high half written first is kept for the low half.
    assert_eq!(
        dma(&mut fw, &mem, high, CTL_SELECT | CTL_READ, 4, high + 0x100),
        0
    );
    assert_eq!(guest_bytes(&mem, high + 0x100, 4), b"QEMU");
    // One 64-bit write starts a transfer too, and the register is cleared after each.
    mem.write_slice(
        &descriptor(CTL_SELECT | CTL_READ | (1 << 16), 4, 0x3000),
        GuestAddress(DESC),
    )
    .unwrap();
    fw.write(4, &DESC.to_be_bytes());
    assert_eq!(control_at(&mem, DESC), 0);
    assert_eq!(guest_bytes(&mem, 0x3000, 4), [3, 0, 0, 0]);
    // A low half alone (as SeaBIOS writes it) addresses below 4 GiB.
    mem.write_slice(
        &descriptor(CTL_SELECT | CTL_READ, 2, 0x3000),
        GuestAddress(DESC),
    )
    .unwrap();
    fw.write(8, &(DESC as u32).to_be_bytes());
    assert_eq!(control_at(&mem, DESC), 0);
    assert_eq!(guest_bytes(&mem, 0x3000, 2), b"QE");
}

#[test]
fn file_name_rules() {
    let mut fw = FwCfg::new(memory());
    let long = "x".repeat(FILE_NAME_MAX + 1);
    assert_eq!(
        fw.add_file(&long, vec![]),
        Err(FwCfgError::BadName(long.clone()))
    );
    assert!(fw.add_file(&long[1..], vec![]).is_ok());
    assert_eq!(
        fw.add_file(&long[1..], vec![]),
        Err(FwCfgError::Duplicate(long[1..].to_string()))
    );
    assert!(matches!(
        fw.add_file("a\0b", vec![]),
        Err(FwCfgError::BadName(_))
    ));
    assert!(matches!(
        fw.add_file("", vec![]),
        Err(FwCfgError::BadName(_))
    ));
    assert_eq!(FwCfgError::Duplicate(String::new()).errno(), libc::EEXIST);
    // A numbered item in the file range is skipped when choosing selectors.
    fw.add_item(0x21, vec![1]);
    assert_eq!(fw.add_file("b", vec![]), Ok(0x22));
}

/// The selector of file `name`.
fn file_key(fw: &FwCfg, name: &str) -> u16 {
    fw.files
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, k)| *k)
        .unwrap()
}

/// Write `features` to `requested-features` by DMA, select `features-ok` and read its byte.
fn request(fw: &mut FwCfg, mem: &GuestMemoryMmap, features: u64) -> u8 {
    let req = file_key(fw, "etc/smi/requested-features");
    mem.write_slice(&features.to_le_bytes(), GuestAddress(0x2000))
        .unwrap();
    let control = CTL_SELECT | CTL_WRITE | (u32::from(req) << 16);
    assert_eq!(dma(fw, mem, DESC, control, 8, 0x2000), 0);
    select(fw, file_key(fw, "etc/smi/features-ok"));
    pio_read(fw, 1)[0]
}

/// OVMF's `NegotiateSmiFeatures`: read the supported set, request the wanted subset of it.
fn negotiate(fw: &mut FwCfg, mem: &GuestMemoryMmap, want: u64) -> (u64, u8) {
    select(fw, file_key(fw, "etc/smi/supported-features"));
    let supported = u64::from_le_bytes(pio_read(fw, 8).try_into().unwrap());
    (supported, request(fw, mem, supported & want))
}

#[test]
fn smi_negotiation_accepts_a_subset_once_and_says_broadcast() {
    let mem = memory();
    let mut fw = FwCfg::new(mem.clone());
    let broadcast = Arc::new(AtomicBool::new(false));
    fw.add_smi_negotiation(SMI_F_BROADCAST, broadcast.clone())
        .unwrap();
    // OVMF asks for broadcast and CPU hotplug, masked by what is offered (broadcast only:
    // this machine has no CPU hotplug).
    let (supported, ok) = negotiate(&mut fw, &mem, !0);
    assert_eq!(supported, SMI_F_BROADCAST);
    assert_eq!(ok, 1, "the subset of what is supported");
    assert!(broadcast.load(Ordering::Acquire));
    // Locked: a later request (here: nothing) changes nothing.
    let (_, ok) = negotiate(&mut fw, &mem, 0);
    assert_eq!(ok, 1);
    assert!(broadcast.load(Ordering::Acquire));
}

#[test]
fn smi_negotiation_refuses_unsupported_features() {
    let mem = memory();
    let mut fw = FwCfg::new(mem.clone());
    let broadcast = Arc::new(AtomicBool::new(false));
    fw.add_smi_negotiation(SMI_F_BROADCAST, broadcast.clone())
        .unwrap();
    // Broadcast and CPU hotplug (bit 1), which is not offered: refused, nothing locked in.
    assert_eq!(request(&mut fw, &mem, 3), 0);
    assert!(!broadcast.load(Ordering::Acquire));
    // Then the broadcast-only request goes through.
    let (_, ok) = negotiate(&mut fw, &mem, SMI_F_BROADCAST);
    assert_eq!(ok, 1);
    assert!(broadcast.load(Ordering::Acquire));
}
