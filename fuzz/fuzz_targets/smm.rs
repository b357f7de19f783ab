//! The SMM side of the Q35 platform from a hostile guest: the MCH's SMRAM registers (extended
//! TSEG query, SMRAM, ESMRAMC, TSEGMB...) and the LPC bridge's GEN_PMCON_1 through PCI
//! configuration writes of any width and offset, SMI_EN in the PM block, the APM ports, QEMU's
//! SMI feature negotiation through fw_cfg (port accesses and DMA writes of planted
//! descriptors), and the Secure Boot variable store's flash, each access from inside or outside
//! SMM. Nothing may panic, and:
//! - once `D_LCK` is set, TSEG is never opened again (no more `set_closed(false)`);
//! - an APM write raises at most one SMI;
//! - the flash changes only through accesses from SMM.

#![no_main]

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use devices::BusDevice;
use devices::chipset::{self, Apm, Ich9Pm, LPC_SLOT, Tseg, TsegControl};
use devices::flash::{Cfi01Flash, FlashBacking, NoRomMode, VecBacking};
use devices::fw_cfg::{CTL_SELECT, CTL_WRITE, FW_CFG_PORTS, FwCfg, SMI_F_BROADCAST};
use devices::virtio::GuestMemoryMmap;
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress};

const MEM: u64 = 16 << 10;
const FLASH: usize = 4 * 4096;

/// Records TSEG's state and whether it was opened after the lock.
#[derive(Clone, Default)]
struct TsegLog {
    closed: Arc<Mutex<Vec<bool>>>,
}

impl TsegControl for TsegLog {
    fn set_closed(&mut self, closed: bool) {
        self.closed.lock().unwrap().push(closed);
    }
}

fuzz_target!(|data: &[u8]| {
    let log = TsegLog::default();
    let (bus, _, smi_lock) = chipset::q35_bus_with(Some(Tseg {
        mbytes: 16,
        control: Box::new(log.clone()),
    }));
    let pm = Arc::new(Mutex::new(Ich9Pm::with_smi_lock(
        Arc::new(|_| {}),
        None,
        smi_lock,
    )));
    let smis = Arc::new(Mutex::new(0usize));
    let counter = smis.clone();
    let broadcast = Arc::new(AtomicBool::new(false));
    let mut apm = Apm::new(
        pm.clone(),
        broadcast.clone(),
        Box::new(move |_| *counter.lock().unwrap() += 1),
    );
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
    let mut fw = FwCfg::new(mem.clone());
    fw.add_smi_negotiation(SMI_F_BROADCAST, broadcast.clone())
        .unwrap();
    let files: Vec<u16> = (0x20..0x23).collect();
    let backing = VecBacking::new(vec![0x5a; FLASH]);
    let mut flash = Cfi01Flash::new(Box::new(backing.clone()), Box::new(NoRomMode), 4096).secure();
    let mut smm_wrote_flash = false;

    // Each operation: kind, flags (width code, SMM), 2 offset bytes, 8 bytes of payload.
    for op in data.chunks_exact(12) {
        let len = [1usize, 2, 4, 8][usize::from(op[1] & 3)];
        let smm = op[1] & 4 != 0;
        let offset = u16::from_le_bytes([op[2], op[3]]);
        let payload = &op[4..12];
        devices::smm::set_access_from_smm(smm);
        match op[0] % 8 {
            // MCH or LPC configuration space, around the SMRAM registers.
            0 => {
                let dev = if op[1] & 8 != 0 { LPC_SLOT } else { 0 };
                let reg = 0x40 + usize::from(offset % 0x90);
                let was_locked = {
                    let mut b = [0u8];
                    bus.config_read(0, 0, 0, 0x9d, &mut b);
                    b[0] & 0x10 != 0
                };
                let before = log.closed.lock().unwrap().len();
                bus.config_write(0, dev, 0, reg, &payload[..len.min(4)]);
                if was_locked {
                    assert_eq!(
                        log.closed.lock().unwrap().len(),
                        before,
                        "TSEG changed after D_LCK"
                    );
                }
            }
            1 => {
                let mut out = [0u8; 4];
                bus.config_read(0, 0, 0, usize::from(offset % 0x100), &mut out[..len.min(4)]);
            }
            // PM block, SMI_EN above all.
            2 => pm
                .lock()
                .unwrap()
                .write(u64::from(0x30 + offset % 8), &payload[..len.min(4)]),
            // APM: at most one SMI per write.
            3 => {
                let before = *smis.lock().unwrap();
                apm.write(u64::from(offset % 3), &payload[..len.min(2)]);
                assert!(*smis.lock().unwrap() <= before + 1);
            }
            // fw_cfg ports.
            4 => {
                if op[1] & 8 != 0 {
                    fw.write(u64::from(offset) % FW_CFG_PORTS, &payload[..len]);
                } else {
                    let mut out = [0u8; 8];
                    fw.read(u64::from(offset) % FW_CFG_PORTS, &mut out[..len]);
                }
            }
            // A DMA write into one of the SMI files, from guest memory the payload fills.
            5 => {
                let key = files[usize::from(payload[0]) % files.len()];
                mem.write_slice(payload, GuestAddress(0x100)).unwrap();
                let control = CTL_SELECT | CTL_WRITE | (u32::from(key) << 16);
                let length = u32::from(payload[1] % 12);
                let mut desc = Vec::with_capacity(16);
                desc.extend_from_slice(&control.to_be_bytes());
                desc.extend_from_slice(&length.to_be_bytes());
                desc.extend_from_slice(&0x100u64.to_be_bytes());
                mem.write_slice(&desc, GuestAddress(0x40)).unwrap();
                fw.write(4, &0u32.to_be_bytes());
                fw.write(8, &0x40u32.to_be_bytes());
            }
            // The flash, inside or outside SMM.
            6 => {
                let at = u64::from(offset) % FLASH as u64;
                flash.write(at, &payload[..len]);
                smm_wrote_flash |= smm;
            }
            _ => {
                let mut out = [0u8; 8];
                flash.read(u64::from(offset) % FLASH as u64, &mut out[..len]);
            }
        }
    }
    devices::smm::set_access_from_smm(false);

    // Without any access from SMM the store is exactly what it was.
    if !smm_wrote_flash {
        let mut now = vec![0u8; FLASH];
        backing.read(0, &mut now);
        assert!(
            now.iter().all(|&b| b == 0x5a),
            "the flash changed without SMM"
        );
    }
});
