//! The Q35 chipset as UEFI firmware (OVMF) expects to find it: the MCH host bridge at 00:00.0
//! with its PCIEXBAR register (where the firmware places ECAM), the ICH9 LPC bridge at 00:1f.0
//! with PMBASE/ACPI_CNTL/PIRQ/RCBA registers, the ICH9 ACPI power-management block (PM1
//! event/control, the 3.579545 MHz PM timer, GPE0, SMI_EN), the reset control register at
//! 0xCF9 and the fast-A20/reset port 0x92.
//!
//! Only what the firmware and Linux use is modelled; every other register reads as zero (PCI
//! configuration space) or all ones (I/O), and writes to it are dropped. The identity matches
//! what systemd-vmspawn's QEMU `-M q35` shows, so OVMF takes its Q35 code paths.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::pci::config::COMMAND;
use crate::pci::{PciBus, PciConfig, PciConfigIo, PciDevice, PciEcam, PciIds};
use crate::{BusDevice, GuestRequest, IrqLevel, PowerButton, RequestSink};

/// Intel's PCI vendor ID.
const VENDOR_INTEL: u16 = 0x8086;
/// Red Hat/QEMU subsystem IDs, as QEMU's chipset functions carry them.
const SUBSYSTEM_VENDOR: u16 = 0x1af4;
const SUBSYSTEM: u16 = 0x1100;

/// The MCH's device ID (OVMF's `INTEL_Q35_MCH_DEVICE_ID`).
pub const MCH_DEVICE_ID: u16 = 0x29c0;
/// The ICH9 LPC bridge's device ID.
pub const LPC_DEVICE_ID: u16 = 0x2918;
/// The LPC bridge's PCI device number (00:1f.0).
pub const LPC_SLOT: u8 = 0x1f;

/// PCIEXBAR in the MCH's configuration space (64 bits).
const PCIEXBAR: usize = 0x60;
const PCIEXBAR_ENABLE: u64 = 1;

/// SMRAM registers of the MCH (a Secure Boot firmware's SMM keeps its code and data in TSEG).
const EXT_TSEG_MBYTES: usize = 0x50;
const EXT_TSEG_QUERY: u16 = 0xffff;
const GGC: usize = 0x52;
const SMRAM: usize = 0x9d;
const SMRAM_D_OPEN: u8 = 1 << 6;
const SMRAM_D_CLS: u8 = 1 << 5;
const SMRAM_D_LCK: u8 = 1 << 4;
const SMRAM_G_SMRAME: u8 = 1 << 3;
/// C_BASE_SEG: the legacy SMRAM segment is at 0xA0000 (read-only).
const SMRAM_DEFAULT: u8 = 0x02;
const ESMRAMC: usize = 0x9e;
const ESMRAMC_H_SMRAME: u8 = 1 << 7;
/// SM_CACHE, SM_L1 and SM_L2 read as ones: OVMF takes them as "this Q35 has SMRAM".
const ESMRAMC_DEFAULT: u8 = 0x38;
const ESMRAMC_TSEG_SZ: u8 = 0x06;
const ESMRAMC_T_EN: u8 = 1;
/// GBSM, BGSM, TSEGMB (32 bits each, megabytes in bits 31:20) and TOLUD (16 bits, 15:4).
const GBSM: usize = 0xa4;
const BGSM: usize = 0xa8;
const TSEGMB: usize = 0xac;
const TOLUD: usize = 0xb0;

/// The LPC bridge's GEN_PMCON_1 and its SMI_LOCK bit, which freezes GBL_SMI_EN until reset.
const GEN_PMCON_1: usize = 0xa0;
const GEN_PMCON_1_SMI_LOCK: u8 = 1 << 4;

/// SMI_EN in the PM block, and its bits.
const SMI_EN: usize = 0x30;
const SMI_EN_GBL: u32 = 1;
const SMI_EN_APMC: u32 = 1 << 5;

/// The APM control and status ports: a write to control raises an SMI (when SMI_EN allows).
pub const APM_PORT: u64 = 0xb2;
/// Control and status.
pub const APM_PORTS: u64 = 2;

/// Where OVMF puts ECAM (`PcdPciExpressBaseAddress`), and the size it asks for.
pub const ECAM_BASE: u64 = 0xb000_0000;
/// 256 buses.
pub const ECAM_SIZE: u64 = 256 << 20;

/// ICH9 LPC registers.
const PMBASE: usize = 0x40;
const ACPI_CNTL: usize = 0x44;
const PIRQ_A: usize = 0x60;
const PIRQ_E: usize = 0x68;
const RCBA: usize = 0xf0;

/// Where OVMF programs the ACPI PM block (`ICH9_PMBASE_VALUE`); the PM device decodes there.
pub const PM_BASE: u64 = 0x600;
/// Ports the ICH9 PM block covers.
pub const PM_PORTS: u64 = 0x80;
/// The reset control register.
pub const RESET_CONTROL_PORT: u64 = 0xcf9;
/// System control port A: fast A20 and fast reset.
pub const PORT_92: u64 = 0x92;

/// PM block offsets.
const PM1_STS: usize = 0x00;
const PM1_EN: usize = 0x02;
const PM1_CNT: usize = 0x04;
/// PM1 status/enable: the power button.
const PM1_PWRBTN: u16 = 1 << 8;
/// The PM1 events this block can raise.
const PM1_EVENTS: u16 = PM1_PWRBTN;
/// PM1 control: the SCI is enabled (ACPI mode).
const PM1_CNT_SCI_EN: u16 = 1;
const PM1_TMR: usize = 0x08;
const PM1_CNT_SLP_EN: u16 = 1 << 13;
const PM1_CNT_SLP_TYP_SHIFT: u16 = 10;
/// The sleep type the DSDT's `\_S5` names (0, as QEMU's ICH9 model and DSDT use).
pub const S5_SLEEP_TYPE: u16 = 0;
/// The ACPI PM timer's rate.
pub const PM_TIMER_HZ: u128 = 3_579_545;

fn chipset_config(device: u16, class: u32) -> PciConfig {
    PciConfig::new(PciIds {
        vendor: VENDOR_INTEL,
        device,
        revision: if device == LPC_DEVICE_ID { 2 } else { 0 },
        class,
        subsystem_vendor: SUBSYSTEM_VENDOR,
        subsystem: SUBSYSTEM,
    })
}

/// What the MCH's SMRAM control registers steer outside the MCH: whether TSEG, the top
/// [`Tseg::mbytes`] of RAM below 4 GiB, can be reached from outside SMM.
pub trait TsegControl: Send {
    /// TSEG closed (`T_EN` set: outside SMM it is a hole that reads all ones and drops writes,
    /// DMA included) or open (plain RAM for everyone).
    fn set_closed(&mut self, closed: bool);
}

/// TSEG, for an MCH with SMRAM: its size and what opens and closes it.
pub struct Tseg {
    /// Megabytes at the top of RAM below 4 GiB, as the MCH's extended-TSEG register reports
    /// them (QEMU's default is 16).
    pub mbytes: u16,
    /// Told whenever `T_EN` changes.
    pub control: Box<dyn TsegControl>,
}

/// The MCH (host bridge, 00:00.0). Its PCIEXBAR value is shared with [`Q35Hole`], which
/// decodes ECAM where it says. With SMM ([`Mch::with_tseg`]) it also has QEMU's SMRAM
/// registers: the extended TSEG size query, SMRAM (`D_LCK`, `G_SMRAME`, `D_OPEN`) and ESMRAMC
/// (`T_EN`, the TSEG size), whose lock freezes both until reset.
pub struct Mch {
    config: PciConfig,
    pciexbar: Arc<AtomicU64>,
    tseg: Option<Tseg>,
    /// Whether TSEG was last reported closed.
    tseg_closed: bool,
}

impl std::fmt::Debug for Mch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mch")
            .field("pciexbar", &self.pciexbar.load(Ordering::Relaxed))
            .finish()
    }
}

impl Mch {
    /// A host bridge with ECAM disabled, as at power-on.
    pub fn new(pciexbar: Arc<AtomicU64>) -> Self {
        let mut config = chipset_config(MCH_DEVICE_ID, 0x06_00_00);
        // PCIEXBAR: enable, length (bits 2:1) and base bits 35:26.
        config.allow_writes(PCIEXBAR, &[0x07, 0x00, 0x00, 0xfc, 0x0f, 0x00, 0x00, 0x00]);
        // PAM0-6: the firmware may program shadowing; RAM stays RAM here.
        config.allow_writes(0x90, &[0xff; 7]);
        pciexbar.store(0, Ordering::Release);
        Mch {
            config,
            pciexbar,
            tseg: None,
            tseg_closed: false,
        }
    }

    /// A host bridge with SMRAM registers and `tseg` below them, TSEG open as at power-on.
    pub fn with_tseg(pciexbar: Arc<AtomicU64>, tseg: Tseg) -> Self {
        let mut mch = Mch::new(pciexbar);
        let c = &mut mch.config;
        c.allow_writes(EXT_TSEG_MBYTES, &[0xff, 0xff]);
        c.allow_writes(GGC, &[0xff, 0xff]);
        c.allow_writes(
            SMRAM,
            &[SMRAM_D_OPEN | SMRAM_D_CLS | SMRAM_D_LCK | SMRAM_G_SMRAME],
        );
        c.allow_writes(
            ESMRAMC,
            &[ESMRAMC_H_SMRAME | ESMRAMC_TSEG_SZ | ESMRAMC_T_EN],
        );
        for reg in [GBSM, BGSM, TSEGMB] {
            c.allow_writes(reg, &[0x00, 0x00, 0xf0, 0xff]);
        }
        c.allow_writes(TOLUD, &[0xf0, 0xff]);
        if let Some(r) = c.raw_mut(SMRAM, 2) {
            r.copy_from_slice(&[SMRAM_DEFAULT, ESMRAMC_DEFAULT]);
        }
        mch.tseg = Some(tseg);
        mch
    }

    /// After a write: the extended TSEG query, the lock, and TSEG's visibility.
    fn update_smram(&mut self, offset: usize, end: usize) {
        let Some(tseg) = &mut self.tseg else {
            return;
        };
        let c = &mut self.config;
        // Writing the query value asks for the size, which then reads back (QEMU's
        // extended TSEG); any other value stays as written.
        if offset < EXT_TSEG_MBYTES + 2
            && EXT_TSEG_MBYTES < end
            && c.read_u16(EXT_TSEG_MBYTES) == EXT_TSEG_QUERY
            && let Some(r) = c.raw_mut(EXT_TSEG_MBYTES, 2)
        {
            r.copy_from_slice(&tseg.mbytes.to_le_bytes());
        }
        if c.read_u8(SMRAM) & SMRAM_D_LCK != 0 {
            // Locked until reset: D_OPEN clears and stays clear, and of both registers only
            // D_CLS can change.
            if let Some(r) = c.raw_mut(SMRAM, 1) {
                r[0] &= !SMRAM_D_OPEN;
            }
            c.allow_writes(SMRAM, &[SMRAM_D_CLS]);
            c.allow_writes(ESMRAMC, &[0]);
        }
        let closed = c.read_u8(ESMRAMC) & ESMRAMC_T_EN != 0;
        if closed != self.tseg_closed {
            self.tseg_closed = closed;
            tseg.control.set_closed(closed);
        }
    }
}

/// Where ECAM is decoded, if enabled: `(base, size)`.
pub fn ecam_window(pciexbar: u64) -> Option<(u64, u64)> {
    if pciexbar & PCIEXBAR_ENABLE == 0 {
        return None;
    }
    let (size, mask) = match (pciexbar >> 1) & 3 {
        0 => (256u64 << 20, 0xf_f000_0000u64),
        1 => (128 << 20, 0xf_f800_0000),
        2 => (64 << 20, 0xf_fc00_0000),
        _ => return None,
    };
    Some((pciexbar & mask, size))
}

impl PciDevice for Mch {
    fn read_config(&mut self, offset: usize, data: &mut [u8]) {
        self.config.read(offset, data);
    }
    fn write_config(&mut self, offset: usize, data: &[u8]) {
        self.config.write(offset, data);
        let end = offset.saturating_add(data.len());
        if offset < TOLUD + 2 && EXT_TSEG_MBYTES < end {
            self.update_smram(offset, end);
        }
        if offset < PCIEXBAR + 8 && PCIEXBAR < end {
            let v = u64::from(self.config.read_u32(PCIEXBAR))
                | (u64::from(self.config.read_u32(PCIEXBAR + 4)) << 32);
            self.pciexbar.store(v, Ordering::Release);
        }
    }
    fn config(&self) -> &PciConfig {
        &self.config
    }
    fn read_bar(&mut self, _bar: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn write_bar(&mut self, _bar: usize, _offset: u64, _data: &[u8]) {}
}

/// The ICH9 LPC bridge (00:1f.0): an ISA bridge (OVMF's serial console and PS/2 hang off
/// it), with the power-management base and interrupt routing registers the firmware programs.
/// The PM block itself is [`Ich9Pm`] at [`PM_BASE`], the only base OVMF programs.
#[derive(Debug)]
pub struct Ich9Lpc {
    config: PciConfig,
    /// GEN_PMCON_1's SMI_LOCK, shared with the PM block's SMI_EN.
    smi_lock: Arc<AtomicBool>,
}

impl Default for Ich9Lpc {
    fn default() -> Self {
        Self::new(Arc::default())
    }
}

impl Ich9Lpc {
    /// The bridge at power-on; `smi_lock` is set when the firmware sets SMI_LOCK.
    pub fn new(smi_lock: Arc<AtomicBool>) -> Self {
        let mut config = chipset_config(LPC_DEVICE_ID, 0x06_01_00);
        // Multi-function, as on Q35 (SATA and SMBus are functions 2 and 3; absent here).
        config.set_header_type(0x80);
        // I/O and memory decoding and bus mastering are set by the firmware's BDS before it
        // binds the ISA bus driver, which checks they read back.
        config.allow_writes(COMMAND, &[0x07, 0x04]);
        // PMBASE: bit 0 reads 1 (an I/O address); bits 15:7 are the base.
        config.allow_writes(PMBASE, &[0x80, 0xff, 0x00, 0x00]);
        if let Some(r) = config.raw_mut(PMBASE, 1) {
            r[0] = 1;
        }
        // ACPI_CNTL: ACPI_EN (bit 7) and the SCI IRQ select (bits 2:0; 0 = IRQ 9).
        config.allow_writes(ACPI_CNTL, &[0x87]);
        // PIRQ[A-H] routing: IRQ number in bits 3:0, disable in bit 7; reset value 0x80.
        for base in [PIRQ_A, PIRQ_E] {
            config.allow_writes(base, &[0x8f; 4]);
            if let Some(r) = config.raw_mut(base, 4) {
                r.fill(0x80);
            }
        }
        // RCBA: base bits 31:14 and enable.
        config.allow_writes(RCBA, &[0x01, 0xc0, 0xff, 0xff]);
        // GEN_PMCON_1: SMI_LOCK can be set, not cleared (see `write_config`).
        config.allow_writes(GEN_PMCON_1, &[GEN_PMCON_1_SMI_LOCK]);
        smi_lock.store(false, Ordering::Release);
        Ich9Lpc { config, smi_lock }
    }
}

impl PciDevice for Ich9Lpc {
    fn read_config(&mut self, offset: usize, data: &mut [u8]) {
        self.config.read(offset, data);
    }
    fn write_config(&mut self, offset: usize, data: &[u8]) {
        self.config.write(offset, data);
        if self.config.read_u8(GEN_PMCON_1) & GEN_PMCON_1_SMI_LOCK != 0 {
            self.config.allow_writes(GEN_PMCON_1, &[0]);
            self.smi_lock.store(true, Ordering::Release);
        }
    }
    fn config(&self) -> &PciConfig {
        &self.config
    }
    fn read_bar(&mut self, _bar: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn write_bar(&mut self, _bar: usize, _offset: u64, _data: &[u8]) {}
}

/// The ICH9 ACPI power-management registers at [`PM_BASE`]: PM1 status/enable/control, the PM
/// timer, GPE0 status/enable and SMI_EN. `SLP_EN` with sleep type [`S5_SLEEP_TYPE`] powers
/// off. The one event source is the fixed power button ([`Ich9Pm::press_power_button`]): it
/// sets `PWRBTN_STS`, and the SCI is asserted while a status bit is set whose enable bit is
/// set and the OS has switched to ACPI mode (`SCI_EN`); the OS clears the status (writing a
/// one) and the SCI drops.
pub struct Ich9Pm {
    regs: [u8; PM_PORTS as usize],
    epoch: Instant,
    sink: RequestSink,
    sci: Option<IrqLevel>,
    sci_level: bool,
    /// The LPC bridge's SMI_LOCK: GBL_SMI_EN cannot be cleared while it is set.
    smi_lock: Arc<AtomicBool>,
}

impl std::fmt::Debug for Ich9Pm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ich9Pm").finish_non_exhaustive()
    }
}

impl Ich9Pm {
    /// The block at power-on; power-off requests go to `sink`, the SCI's level to `sci`.
    pub fn new(sink: RequestSink, sci: Option<IrqLevel>) -> Self {
        Self::with_smi_lock(sink, sci, Arc::default())
    }

    /// As [`Ich9Pm::new`], with SMI_EN's GBL_SMI_EN frozen once `smi_lock` (the LPC bridge's
    /// GEN_PMCON_1 SMI_LOCK) is set.
    pub fn with_smi_lock(
        sink: RequestSink,
        sci: Option<IrqLevel>,
        smi_lock: Arc<AtomicBool>,
    ) -> Self {
        Ich9Pm {
            regs: [0; PM_PORTS as usize],
            epoch: Instant::now(),
            sink,
            sci,
            sci_level: false,
            smi_lock,
        }
    }

    /// Whether a write to the APM control port raises an SMI (SMI_EN's APMC_EN and
    /// GBL_SMI_EN).
    pub fn apm_raises_smi(&self) -> bool {
        let want = SMI_EN_APMC | SMI_EN_GBL;
        self.smi_en() & want == want
    }

    fn smi_en(&self) -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.regs[SMI_EN..SMI_EN + 4]);
        u32::from_le_bytes(b)
    }

    /// The fixed power button was pressed and released: `PWRBTN_STS`, and the SCI if enabled.
    pub fn press_power_button(&mut self) {
        self.regs[PM1_STS + 1] |= (PM1_PWRBTN >> 8) as u8;
        self.update_sci();
    }

    /// Drive the SCI from the status, enable and `SCI_EN` bits.
    fn update_sci(&mut self) {
        let pending = self.reg16(PM1_STS) & self.reg16(PM1_EN) & PM1_EVENTS != 0;
        let level = pending && self.reg16(PM1_CNT) & PM1_CNT_SCI_EN != 0;
        if level != self.sci_level {
            self.sci_level = level;
            if let Some(sci) = &self.sci {
                sci(level);
            }
        }
    }

    /// The PM timer: 24 bits counting at 3.579545 MHz (the FADT leaves TMR_VAL_EXT clear).
    fn timer(&self) -> u32 {
        let ticks = self.epoch.elapsed().as_nanos() * PM_TIMER_HZ / 1_000_000_000;
        (ticks & 0xff_ffff) as u32
    }

    fn reg16(&self, at: usize) -> u16 {
        u16::from_le_bytes([self.regs[at], self.regs[at + 1]])
    }
}

impl BusDevice for Ich9Pm {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let timer = self.timer().to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            let Some(at) = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .filter(|&o| o < self.regs.len())
            else {
                *b = 0xff;
                continue;
            };
            *b = match at {
                PM1_TMR..=0x0b => timer[at - PM1_TMR],
                _ => self.regs[at],
            };
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let gbl_locked = self.smi_lock.load(Ordering::Acquire) && self.smi_en() & SMI_EN_GBL != 0;
        for (i, v) in data.iter().enumerate() {
            let Some(at) = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .filter(|&o| o < self.regs.len())
            else {
                return;
            };
            match at {
                // GBL_SMI_EN stays set once SMI_LOCK is.
                SMI_EN if gbl_locked => self.regs[at] = *v | SMI_EN_GBL as u8,
                // Status bits are cleared by writing ones.
                PM1_STS..=0x01 | 0x20..=0x27 | 0x34..=0x37 => self.regs[at] &= !v,
                // The timer is read-only.
                PM1_TMR..=0x0b => {}
                _ => self.regs[at] = *v,
            }
        }
        let end = offset.saturating_add(data.len() as u64);
        if offset <= PM1_CNT as u64 + 1 && end > PM1_CNT as u64 {
            let cnt = self.reg16(PM1_CNT);
            if cnt & PM1_CNT_SLP_EN != 0 {
                // SLP_EN is write-only: it reads back as zero.
                self.regs[PM1_CNT + 1] &= !((PM1_CNT_SLP_EN >> 8) as u8);
                if (cnt >> PM1_CNT_SLP_TYP_SHIFT) & 7 == S5_SLEEP_TYPE {
                    (self.sink)(GuestRequest::PowerOff);
                }
            }
        }
        if offset < PM1_TMR as u64 {
            self.update_sci();
        }
    }
}

/// Raises an SMI: on every vCPU (`broadcast`, once the firmware negotiated it) or on the one
/// whose access is being served.
pub type SmiTrigger = Box<dyn Fn(bool) + Send>;

/// The APM control (0xB2) and status (0xB3) ports. A write to control raises an SMI when the PM
/// block's SMI_EN allows it (the way OVMF's SMM drivers are called: variable services above
/// all); status is a scratch byte that carries the caller's argument.
pub struct Apm {
    regs: [u8; 2],
    pm: Arc<Mutex<Ich9Pm>>,
    broadcast: Arc<AtomicBool>,
    smi: SmiTrigger,
}

impl std::fmt::Debug for Apm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Apm")
            .field("regs", &self.regs)
            .finish_non_exhaustive()
    }
}

impl Apm {
    /// The ports of the PM block `pm`; `broadcast` says whether SMIs go to every vCPU (set by
    /// the fw_cfg negotiation), `smi` raises them.
    pub fn new(pm: Arc<Mutex<Ich9Pm>>, broadcast: Arc<AtomicBool>, smi: SmiTrigger) -> Self {
        Apm {
            regs: [0; 2],
            pm,
            broadcast,
            smi,
        }
    }
}

impl BusDevice for Apm {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|o| self.regs.get(o))
                .copied()
                .unwrap_or(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut control = false;
        for (i, v) in data.iter().enumerate() {
            let Some(at) = usize::try_from(offset).ok().and_then(|o| o.checked_add(i)) else {
                return;
            };
            if let Some(r) = self.regs.get_mut(at) {
                *r = *v;
                control |= at == 0;
            }
        }
        if control
            && self
                .pm
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .apm_raises_smi()
        {
            (self.smi)(self.broadcast.load(Ordering::Acquire));
        }
    }
}

/// The Q35 platform's power button: the ICH9 PM block's fixed power button.
pub struct Ich9PowerButton(pub Arc<Mutex<Ich9Pm>>);

impl PowerButton for Ich9PowerButton {
    fn press(&self) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .press_power_button();
    }
}

/// The reset control register (0xCF9): a write with RST_CPU (bit 2) set resets the machine,
/// as the FADT's reset register and OVMF's `ResetCold` use it.
pub struct ResetControl {
    value: u8,
    sink: RequestSink,
}

impl std::fmt::Debug for ResetControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResetControl")
            .field("value", &self.value)
            .finish()
    }
}

impl ResetControl {
    /// The register at power-on.
    pub fn new(sink: RequestSink) -> Self {
        ResetControl { value: 0, sink }
    }

    fn write_byte(&mut self, v: u8) {
        if v & 0x04 != 0 {
            (self.sink)(GuestRequest::Reset);
        }
        // SYS_RST (bit 1) and FULL_RST (bit 3) are kept; RST_CPU reads back clear.
        self.value = v & 0x0a;
    }
}

/// Ports 0xCF8-0xCFF: PCI configuration mechanism #1 plus, as a byte at 0xCF9, the reset
/// control register that shares its dword.
pub struct ConfigAndReset {
    config: PciConfigIo,
    reset: ResetControl,
}

impl std::fmt::Debug for ConfigAndReset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigAndReset").finish_non_exhaustive()
    }
}

impl ConfigAndReset {
    /// Both registers, for `bus`.
    pub fn new(bus: Arc<PciBus>, sink: RequestSink) -> Self {
        ConfigAndReset {
            config: PciConfigIo::new(bus),
            reset: ResetControl::new(sink),
        }
    }
}

const RESET_OFFSET: u64 = RESET_CONTROL_PORT - crate::pci::CONFIG_IO_PORT;

impl BusDevice for ConfigAndReset {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset == RESET_OFFSET && data.len() == 1 {
            data[0] = self.reset.value;
        } else {
            self.config.read(offset, data);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == RESET_OFFSET && data.len() == 1 {
            self.reset.write_byte(data[0]);
        } else {
            self.config.write(offset, data);
        }
    }
}

/// System control port A (0x92): bit 1 is the A20 gate (always on in a VM, but it reads back
/// as written), bit 0 set from clear resets the machine.
pub struct Port92 {
    value: u8,
    sink: RequestSink,
}

impl std::fmt::Debug for Port92 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Port92")
            .field("value", &self.value)
            .finish()
    }
}

impl Port92 {
    /// The port at power-on.
    pub fn new(sink: RequestSink) -> Self {
        Port92 { value: 0, sink }
    }
}

impl BusDevice for Port92 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        if let Some(b) = data.first_mut() {
            *b = self.value;
        }
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        if v & 1 != 0 && self.value & 1 == 0 {
            (self.sink)(GuestRequest::Reset);
        }
        self.value = v & 0x02;
    }
}

/// The 32-bit PCI hole below the IOAPIC, as one bus range: ECAM where the MCH's PCIEXBAR
/// puts it, then whichever BAR the firmware placed at the address, else nothing (all ones).
/// RAM, the APICs and the flash are KVM memory slots or in-kernel devices and never get here.
pub struct Q35Hole {
    base: u64,
    pciexbar: Arc<AtomicU64>,
    ecam: PciEcam,
    bus: Arc<PciBus>,
}

impl std::fmt::Debug for Q35Hole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Q35Hole")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl Q35Hole {
    /// The hole starting at guest address `base`.
    pub fn new(base: u64, pciexbar: Arc<AtomicU64>, bus: Arc<PciBus>) -> Self {
        Q35Hole {
            base,
            pciexbar,
            ecam: PciEcam::new(bus.clone()),
            bus,
        }
    }

    fn ecam_offset(&self, addr: u64, len: usize) -> Option<u64> {
        let (base, size) = ecam_window(self.pciexbar.load(Ordering::Acquire))?;
        let off = addr.checked_sub(base)?;
        (off.checked_add(len as u64)? <= size).then_some(off)
    }
}

impl BusDevice for Q35Hole {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let Some(addr) = self.base.checked_add(offset) else {
            data.fill(0xff);
            return;
        };
        match self.ecam_offset(addr, data.len()) {
            Some(off) => self.ecam.read(off, data),
            None => {
                self.bus.mmio_read(addr, data);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(addr) = self.base.checked_add(offset) else {
            return;
        };
        match self.ecam_offset(addr, data.len()) {
            Some(off) => self.ecam.write(off, data),
            None => {
                self.bus.mmio_write(addr, data);
            }
        }
    }
}

/// A Q35 PCI bus: the MCH at 00:00.0 and the LPC bridge at 00:1f.0, plus the PCIEXBAR value
/// [`Q35Hole`] needs.
pub fn q35_bus() -> (PciBus, Arc<AtomicU64>) {
    let (bus, pciexbar, _) = q35_bus_with(None);
    (bus, pciexbar)
}

/// [`q35_bus`] with SMRAM in the MCH when `tseg` is given; also returns the LPC bridge's
/// SMI_LOCK for the PM block ([`Ich9Pm::with_smi_lock`]).
pub fn q35_bus_with(tseg: Option<Tseg>) -> (PciBus, Arc<AtomicU64>, Arc<AtomicBool>) {
    let pciexbar = Arc::new(AtomicU64::new(0));
    let mch = match tseg {
        Some(t) => Mch::with_tseg(pciexbar.clone(), t),
        None => Mch::new(pciexbar.clone()),
    };
    let mut bus = PciBus::with_host_bridge(Arc::new(Mutex::new(mch)));
    let smi_lock = Arc::new(AtomicBool::new(false));
    // Slot 31 of an empty bus is free.
    let _ = bus.add_at(
        LPC_SLOT,
        Arc::new(Mutex::new(Ich9Lpc::new(smi_lock.clone()))),
    );
    (bus, pciexbar, smi_lock)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink() -> (RequestSink, Arc<Mutex<Vec<GuestRequest>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        (Arc::new(move |r| s.lock().unwrap().push(r)), seen)
    }

    fn cfg_read32(bus: &PciBus, dev: u8, reg: usize) -> u32 {
        let mut b = [0u8; 4];
        bus.config_read(0, dev, 0, reg, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn identity_is_q35() {
        let (bus, _) = q35_bus();
        assert_eq!(cfg_read32(&bus, 0, 0), 0x29c0_8086);
        assert_eq!(cfg_read32(&bus, LPC_SLOT, 0), 0x2918_8086);
        assert_eq!(cfg_read32(&bus, LPC_SLOT, 8) >> 8, 0x06_01_00);
        // Empty slots read as ones.
        assert_eq!(cfg_read32(&bus, 5, 0), 0xffff_ffff);
    }

    #[test]
    fn pmbase_and_acpi_cntl_read_back_as_ovmf_writes_them() {
        let (bus, _) = q35_bus();
        assert_eq!(cfg_read32(&bus, LPC_SLOT, PMBASE), 1);
        bus.config_write(0, LPC_SLOT, 0, PMBASE, &0x600u32.to_le_bytes());
        assert_eq!(cfg_read32(&bus, LPC_SLOT, PMBASE), 0x601);
        bus.config_write(0, LPC_SLOT, 0, ACPI_CNTL, &[0x80]);
        assert_eq!(cfg_read32(&bus, LPC_SLOT, ACPI_CNTL) & 0xff, 0x80);
        bus.config_write(0, LPC_SLOT, 0, COMMAND, &[0x07, 0]);
        assert_eq!(cfg_read32(&bus, LPC_SLOT, COMMAND) & 7, 7);
        assert_eq!(cfg_read32(&bus, LPC_SLOT, PIRQ_A), 0x8080_8080);
    }

    #[test]
    fn ecam_appears_where_pciexbar_puts_it() {
        let (bus, pciexbar) = q35_bus();
        let bus = Arc::new(bus);
        let mut hole = Q35Hole::new(0x8000_0000, pciexbar, bus.clone());
        let at = |addr: u64| addr - 0x8000_0000;
        let mut id = [0u8; 4];
        hole.read(at(ECAM_BASE), &mut id);
        assert_eq!(id, [0xff; 4], "no ECAM before the firmware enables it");
        bus.config_write(0, 0, 0, PCIEXBAR + 4, &0u32.to_le_bytes());
        bus.config_write(0, 0, 0, PCIEXBAR, &((ECAM_BASE as u32) | 1).to_le_bytes());
        hole.read(at(ECAM_BASE), &mut id);
        assert_eq!(u32::from_le_bytes(id), 0x29c0_8086);
        // 00:1f.0 through ECAM.
        hole.read(at(ECAM_BASE + (0x1f << 15)), &mut id);
        assert_eq!(u32::from_le_bytes(id), 0x2918_8086);
        // Moved: the old place is empty, the new one decodes.
        bus.config_write(0, 0, 0, PCIEXBAR, &(0xe000_0000u32 | 1).to_le_bytes());
        hole.read(at(ECAM_BASE), &mut id);
        assert_eq!(id, [0xff; 4]);
        hole.read(at(0xe000_0000), &mut id);
        assert_eq!(u32::from_le_bytes(id), 0x29c0_8086);
    }

    #[test]
    fn pm_timer_counts_and_s5_powers_off() {
        let (s, seen) = sink();
        let mut pm = Ich9Pm::new(s, None);
        let read_timer = |pm: &mut Ich9Pm| {
            let mut t = [0u8; 4];
            pm.read(PM1_TMR as u64, &mut t);
            u32::from_le_bytes(t)
        };
        let a = read_timer(&mut pm);
        let start = Instant::now();
        while start.elapsed().as_micros() < 200 {}
        let b = read_timer(&mut pm);
        assert!(b < 1 << 24 && a < 1 << 24);
        assert_ne!(a, b, "the PM timer must advance");
        // SCI_EN reads back; a sleep type other than S5 does nothing.
        pm.write(PM1_CNT as u64, &1u16.to_le_bytes());
        let mut c = [0u8; 2];
        pm.read(PM1_CNT as u64, &mut c);
        assert_eq!(u16::from_le_bytes(c), 1);
        pm.write(
            PM1_CNT as u64,
            &(1 | (1 << 10) | PM1_CNT_SLP_EN).to_le_bytes(),
        );
        assert!(seen.lock().unwrap().is_empty());
        pm.write(PM1_CNT as u64, &(1 | PM1_CNT_SLP_EN).to_le_bytes());
        assert_eq!(*seen.lock().unwrap(), vec![GuestRequest::PowerOff]);
        // Out-of-range accesses neither panic nor take effect.
        let mut d = [0u8; 4];
        pm.read(PM_PORTS - 2, &mut d);
        assert_eq!(&d[2..], &[0xff, 0xff]);
        pm.write(u64::MAX, &[1]);
    }

    #[test]
    fn the_power_button_raises_the_sci_until_the_os_clears_it() {
        let (s, _) = sink();
        let levels = Arc::new(Mutex::new(Vec::new()));
        let l = levels.clone();
        let pm = Arc::new(Mutex::new(Ich9Pm::new(
            s,
            Some(Box::new(move |level| l.lock().unwrap().push(level))),
        )));
        let button = Ich9PowerButton(pm.clone());
        let sts = |pm: &Arc<Mutex<Ich9Pm>>| {
            let mut v = [0u8; 2];
            pm.lock().unwrap().read(PM1_STS as u64, &mut v);
            u16::from_le_bytes(v)
        };
        // Before ACPI mode and the enable bit: the status is set, no SCI.
        button.press();
        assert_eq!(sts(&pm), PM1_PWRBTN);
        assert!(levels.lock().unwrap().is_empty());
        let mut p = pm.lock().unwrap();
        p.write(PM1_STS as u64, &PM1_PWRBTN.to_le_bytes());
        p.write(PM1_EN as u64, &PM1_PWRBTN.to_le_bytes());
        p.write(PM1_CNT as u64, &PM1_CNT_SCI_EN.to_le_bytes());
        drop(p);
        assert_eq!(sts(&pm), 0, "written ones clear the status");
        assert!(levels.lock().unwrap().is_empty());
        // Enabled: a press asserts the SCI, a second one changes nothing, the OS's clear drops it.
        button.press();
        button.press();
        assert_eq!(*levels.lock().unwrap(), vec![true]);
        pm.lock()
            .unwrap()
            .write(PM1_STS as u64, &PM1_PWRBTN.to_le_bytes());
        assert_eq!(*levels.lock().unwrap(), vec![true, false]);
        // A status left pending asserts the SCI when the OS enables it.
        button.press();
        pm.lock().unwrap().write(PM1_EN as u64, &0u16.to_le_bytes());
        assert_eq!(*levels.lock().unwrap(), vec![true, false, true, false]);
        pm.lock()
            .unwrap()
            .write(PM1_EN as u64, &PM1_PWRBTN.to_le_bytes());
        assert_eq!(
            *levels.lock().unwrap(),
            vec![true, false, true, false, true]
        );
    }

    #[test]
    fn reset_register_and_port_92_reset() {
        let (bus, _) = q35_bus();
        let (s, seen) = sink();
        let mut io = ConfigAndReset::new(Arc::new(bus), s.clone());
        io.write(RESET_OFFSET, &[0x02]);
        assert!(seen.lock().unwrap().is_empty());
        io.write(RESET_OFFSET, &[0x06]);
        assert_eq!(*seen.lock().unwrap(), vec![GuestRequest::Reset]);
        // CONFIG_ADDRESS still works beside it.
        io.write(0, &0x8000_0000u32.to_le_bytes());
        let mut id = [0u8; 4];
        io.read(4, &mut id);
        assert_eq!(u32::from_le_bytes(id), 0x29c0_8086);

        let mut p = Port92::new(s);
        p.write(0, &[0x02]);
        let mut v = [0u8];
        p.read(0, &mut v);
        assert_eq!(v, [0x02]);
        p.write(0, &[0x03]);
        assert_eq!(seen.lock().unwrap().len(), 2);
    }

    /// Records what the MCH tells TSEG's owner.
    #[derive(Clone, Default)]
    struct TsegLog(Arc<Mutex<Vec<bool>>>);

    impl TsegControl for TsegLog {
        fn set_closed(&mut self, closed: bool) {
            self.0.lock().unwrap().push(closed);
        }
    }

    fn smm_bus() -> (PciBus, TsegLog, Arc<AtomicBool>) {
        let log = TsegLog::default();
        let (bus, _, lock) = q35_bus_with(Some(Tseg {
            mbytes: 16,
            control: Box::new(log.clone()),
        }));
        (bus, log, lock)
    }

    fn cfg_read8(bus: &PciBus, dev: u8, reg: usize) -> u8 {
        let mut b = [0u8];
        bus.config_read(0, dev, 0, reg, &mut b);
        b[0]
    }

    fn cfg_write8(bus: &PciBus, dev: u8, reg: usize, v: u8) {
        bus.config_write(0, dev, 0, reg, &[v]);
    }

    #[test]
    fn smram_registers_follow_ovmfs_smm_access_pei_and_lock() {
        let (bus, log, _) = smm_bus();
        // Power-on: SMRAM present (SM_CACHE/L1/L2), C_BASE_SEG 010, TSEG open.
        assert_eq!(cfg_read8(&bus, 0, ESMRAMC), 0x38);
        assert_eq!(cfg_read8(&bus, 0, SMRAM), 0x02);
        // The extended TSEG query answers the size; another value reads back as written.
        bus.config_write(0, 0, 0, EXT_TSEG_MBYTES, &0xffffu16.to_le_bytes());
        assert_eq!(cfg_read32(&bus, 0, EXT_TSEG_MBYTES) & 0xffff, 16);
        // SmmAccessPei: TSEGMB, ESMRAMC with the extended size and T_EN, G_SMRAME.
        bus.config_write(0, 0, 0, TSEGMB, &(0x7f0u32 << 20).to_le_bytes());
        assert_eq!(cfg_read32(&bus, 0, TSEGMB), 0x7f0 << 20);
        cfg_write8(&bus, 0, ESMRAMC, 0x38 | ESMRAMC_TSEG_SZ | ESMRAMC_T_EN);
        cfg_write8(&bus, 0, SMRAM, SMRAM_DEFAULT | SMRAM_G_SMRAME);
        assert_eq!(*log.0.lock().unwrap(), [true]);
        // SmramAccessOpen/Close: T_EN.
        cfg_write8(&bus, 0, ESMRAMC, 0x38 | ESMRAMC_TSEG_SZ);
        cfg_write8(&bus, 0, ESMRAMC, 0x38 | ESMRAMC_TSEG_SZ | ESMRAMC_T_EN);
        assert_eq!(*log.0.lock().unwrap(), [true, false, true]);
        // Lock (with D_OPEN set on the way): D_OPEN clears, nothing reopens TSEG.
        cfg_write8(
            &bus,
            0,
            SMRAM,
            SMRAM_DEFAULT | SMRAM_G_SMRAME | SMRAM_D_OPEN | SMRAM_D_LCK,
        );
        assert_eq!(
            cfg_read8(&bus, 0, SMRAM) & (SMRAM_D_OPEN | SMRAM_D_LCK),
            SMRAM_D_LCK
        );
        cfg_write8(&bus, 0, ESMRAMC, 0);
        cfg_write8(&bus, 0, SMRAM, SMRAM_D_OPEN);
        bus.config_write(0, 0, 0, 0x9c, &[0, 0, 0, 0]);
        assert_eq!(cfg_read8(&bus, 0, ESMRAMC) & ESMRAMC_T_EN, ESMRAMC_T_EN);
        assert_eq!(
            cfg_read8(&bus, 0, SMRAM) & (SMRAM_D_OPEN | SMRAM_D_LCK),
            SMRAM_D_LCK
        );
        assert_eq!(*log.0.lock().unwrap(), [true, false, true]);
        // No default-SMBASE SMRAM: the query reads back as "not offered".
        cfg_write8(&bus, 0, 0x9c, 0xff);
        assert_eq!(cfg_read8(&bus, 0, 0x9c), 0);
    }

    #[test]
    fn without_smm_the_mch_has_no_smram() {
        let (bus, _) = q35_bus();
        assert_eq!(cfg_read8(&bus, 0, ESMRAMC), 0);
        bus.config_write(0, 0, 0, EXT_TSEG_MBYTES, &0xffffu16.to_le_bytes());
        assert_eq!(cfg_read32(&bus, 0, EXT_TSEG_MBYTES) & 0xffff, 0);
    }

    #[test]
    fn apm_raises_an_smi_only_as_smi_en_allows_and_smi_lock_holds_it() {
        let (bus, _, lock) = smm_bus();
        let (s, _) = sink();
        let pm = Arc::new(Mutex::new(Ich9Pm::with_smi_lock(s, None, lock)));
        let smis = Arc::new(Mutex::new(Vec::new()));
        let seen = smis.clone();
        let broadcast = Arc::new(AtomicBool::new(false));
        let mut apm = Apm::new(
            pm.clone(),
            broadcast.clone(),
            Box::new(move |b| seen.lock().unwrap().push(b)),
        );
        // SMI_EN clear at reset (else OVMF concludes "no SMI"): no SMI.
        let mut en = [0u8; 4];
        pm.lock().unwrap().read(SMI_EN as u64, &mut en);
        assert_eq!(en, [0; 4]);
        apm.write(0, &[0x42]);
        assert!(smis.lock().unwrap().is_empty());
        // SmmControl2Dxe: APMC_EN | GBL_SMI_EN, SMI_LOCK, then a try to clear GBL_SMI_EN.
        pm.lock()
            .unwrap()
            .write(SMI_EN as u64, &0x21u32.to_le_bytes());
        bus.config_write(0, LPC_SLOT, 0, GEN_PMCON_1, &[GEN_PMCON_1_SMI_LOCK, 0]);
        assert_eq!(cfg_read8(&bus, LPC_SLOT, GEN_PMCON_1), GEN_PMCON_1_SMI_LOCK);
        pm.lock()
            .unwrap()
            .write(SMI_EN as u64, &0x20u32.to_le_bytes());
        pm.lock().unwrap().read(SMI_EN as u64, &mut en);
        assert_eq!(u32::from_le_bytes(en), 0x21);
        // SMI_LOCK cannot be cleared.
        bus.config_write(0, LPC_SLOT, 0, GEN_PMCON_1, &[0, 0]);
        assert_eq!(cfg_read8(&bus, LPC_SLOT, GEN_PMCON_1), GEN_PMCON_1_SMI_LOCK);
        // Status is a scratch byte; control raises the SMI, broadcast once negotiated.
        apm.write(1, &[0x5a]);
        assert!(smis.lock().unwrap().is_empty());
        let mut st = [0u8];
        apm.read(1, &mut st);
        assert_eq!(st, [0x5a]);
        apm.write(0, &[0x01]);
        broadcast.store(true, Ordering::Release);
        apm.write(0, &[0x01, 0x02]);
        assert_eq!(*smis.lock().unwrap(), [false, true]);
        // APMC_EN cleared (not locked): no more SMIs.
        pm.lock()
            .unwrap()
            .write(SMI_EN as u64, &0x01u32.to_le_bytes());
        apm.write(0, &[0x01]);
        assert_eq!(smis.lock().unwrap().len(), 2);
    }
}
