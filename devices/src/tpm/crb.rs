//! The CRB register file of locality 0 (TCG PC Client Platform TPM Profile, CRB interface),
//! and the ACPI that tells the guest about it.

use std::sync::Arc;

use acpi_tables::Aml;
use acpi_tables::aml::{Device, Memory32Fixed, Method, Name, Path, ResourceTemplate, Return};
use acpi_tables::sdt::Sdt;

use super::{BUFFER_OFFSET, BUFFER_SIZE, CRB_BASE, CRB_SIZE, Shared, check_command, command};
use crate::{AcpiDevice, BusDevice};

const LOC_STATE: u64 = 0x00;
const LOC_CTRL: u64 = 0x08;
const LOC_STS: u64 = 0x0c;
const INTF_ID_LO: u64 = 0x30;
const INTF_ID_HI: u64 = 0x34;
const CTRL_REQ: u64 = 0x40;
const CTRL_STS: u64 = 0x44;
const CTRL_CANCEL: u64 = 0x48;
const CTRL_START: u64 = 0x4c;
const CMD_SIZE: u64 = 0x58;
const CMD_LADDR: u64 = 0x5c;
const CMD_HADDR: u64 = 0x60;
const RSP_SIZE: u64 = 0x64;
const RSP_LADDR: u64 = 0x68;
const RSP_HADDR: u64 = 0x6c;

/// The control area the TPM2 table points at.
pub const CONTROL_AREA: u64 = CRB_BASE + CTRL_REQ;

// TPM_LOC_STATE_0.
const LOC_STATE_ESTABLISHED: u32 = 1 << 0;
const LOC_STATE_ASSIGNED: u32 = 1 << 1;
const LOC_STATE_REG_VALID: u32 = 1 << 7;
// TPM_LOC_CTRL_0.
const LOC_CTRL_REQUEST: u32 = 1 << 0;
const LOC_CTRL_RELINQUISH: u32 = 1 << 1;
const LOC_CTRL_SEIZE: u32 = 1 << 2;
const LOC_CTRL_RESET_ESTABLISHMENT: u32 = 1 << 3;
// TPM_LOC_STS_0.
const LOC_STS_GRANTED: u32 = 1 << 0;
// TPM_CRB_CTRL_REQ_0.
const CTRL_REQ_CMD_READY: u32 = 1 << 0;
const CTRL_REQ_GO_IDLE: u32 = 1 << 1;
// TPM_CRB_CTRL_STS_0.
const CTRL_STS_ERROR: u32 = 1 << 0;
const CTRL_STS_IDLE: u32 = 1 << 1;

/// TPM_CRB_INTF_ID_0, low word: InterfaceType 1 (CRB active), InterfaceVersion 1 (CRB),
/// CapLocality 0 (locality 0 only), CapCRBIdleBypass 0, CapDataXferSizeSupport 3 (64 bytes),
/// CapFIFO 0, CapCRB 1, InterfaceSelector 1 (CRB), RID 0.
const INTF_ID_LOW: u32 = 1 | (1 << 4) | (3 << 11) | (1 << 14) | (1 << 17);
/// High word: vendor 0x1014 (IBM, as swtpm reports itself), device 0.
const INTF_ID_HIGH: u32 = 0x1014;

const OEM_ID: [u8; 6] = *b"RVMSPN";
const OEM_TABLE_ID: [u8; 8] = *b"RVMSPAWN";
const OEM_REVISION: u32 = 1;
/// TPM2 table: revision 4 (TCG ACPI Specification), with the start-method parameters and the
/// log area fields, all zero: no firmware event log.
const TPM2_REVISION: u8 = 4;
const TPM2_LENGTH: u32 = 76;
/// Start method 7: the Command Response Buffer interface.
const START_METHOD_CRB: u32 = 7;

/// One machine's CRB register file, locality 0 only.
pub struct TpmCrb {
    tpm: Arc<Shared>,
    assigned: bool,
    idle: bool,
    cancel: bool,
    /// The command the guest started and the TPM has not answered yet.
    pending: Option<u64>,
    buffer: Box<[u8; BUFFER_SIZE]>,
}

impl std::fmt::Debug for TpmCrb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TpmCrb")
            .field("assigned", &self.assigned)
            .field("idle", &self.idle)
            .field("pending", &self.pending)
            .finish_non_exhaustive()
    }
}

impl TpmCrb {
    pub(crate) fn new(tpm: Arc<Shared>) -> Self {
        TpmCrb {
            tpm,
            assigned: false,
            idle: true,
            cancel: false,
            pending: None,
            buffer: Box::new([0; BUFFER_SIZE]),
        }
    }

    /// Put the finished command's response in the buffer and clear START.
    fn collect(&mut self) {
        let Some(ticket) = self.pending else {
            return;
        };
        let Some(outcome) = self.tpm.outcome(ticket) else {
            return;
        };
        let response = outcome.unwrap_or_else(|_| command::error_response(command::TPM_RC_FAILURE));
        let n = response.len().min(BUFFER_SIZE);
        self.buffer[..n].copy_from_slice(&response[..n]);
        self.pending = None;
    }

    /// The 32-bit register at `offset` (a multiple of 4 below the buffer).
    fn register(&self, offset: u64) -> u32 {
        match offset {
            LOC_STATE => {
                let (_, established) = self.tpm.status();
                let mut v = LOC_STATE_REG_VALID;
                if established {
                    v |= LOC_STATE_ESTABLISHED;
                }
                // activeLocality (bits 2-4) is 0: the only locality.
                if self.assigned {
                    v |= LOC_STATE_ASSIGNED;
                }
                v
            }
            LOC_STS => u32::from(self.assigned) * LOC_STS_GRANTED,
            INTF_ID_LO => INTF_ID_LOW,
            INTF_ID_HI => INTF_ID_HIGH,
            CTRL_STS => {
                let (failed, _) = self.tpm.status();
                let mut v = 0;
                if failed {
                    v |= CTRL_STS_ERROR;
                }
                if self.idle {
                    v |= CTRL_STS_IDLE;
                }
                v
            }
            CTRL_CANCEL => u32::from(self.cancel),
            CTRL_START => u32::from(self.pending.is_some()),
            CMD_SIZE | RSP_SIZE => BUFFER_SIZE as u32,
            CMD_LADDR | RSP_LADDR => (CRB_BASE + BUFFER_OFFSET) as u32,
            CMD_HADDR | RSP_HADDR => ((CRB_BASE + BUFFER_OFFSET) >> 32) as u32,
            // LOC_CTRL and CTRL_REQ act at once and read 0; the rest is reserved.
            _ => 0,
        }
    }

    /// A write of `value` to the bits `mask` of the register at `offset`.
    fn write_register(&mut self, offset: u64, value: u32, mask: u32) {
        let v = value & mask;
        match offset {
            LOC_CTRL => {
                if v & (LOC_CTRL_REQUEST | LOC_CTRL_SEIZE) != 0 {
                    self.assigned = true;
                } else if v & LOC_CTRL_RELINQUISH != 0 {
                    self.assigned = false;
                }
                if v & LOC_CTRL_RESET_ESTABLISHMENT != 0 {
                    self.tpm.reset_established();
                }
            }
            CTRL_REQ => {
                if v & CTRL_REQ_CMD_READY != 0 {
                    self.idle = false;
                } else if v & CTRL_REQ_GO_IDLE != 0 {
                    self.idle = true;
                }
            }
            CTRL_CANCEL if mask & 1 != 0 => {
                self.cancel = v & 1 != 0;
                if self.cancel
                    && let Some(ticket) = self.pending
                {
                    self.tpm.cancel(ticket);
                }
            }
            CTRL_START if v & 1 != 0 => self.start(),
            _ => {}
        }
    }

    /// CTRL_START: hand the command in the buffer to the TPM, if the TPM is ready, locality 0
    /// is assigned and no command is running. A command the TPM must refuse ends at once.
    fn start(&mut self) {
        if self.pending.is_some() || self.idle || !self.assigned {
            return;
        }
        let size = command::header_size(&self.buffer[..]).unwrap_or(0) as usize;
        let command = &self.buffer[..size.min(BUFFER_SIZE)];
        if let Err(rc) = check_command(command) {
            let r = command::error_response(rc);
            self.buffer[..r.len()].copy_from_slice(&r);
            return;
        }
        self.pending = Some(self.tpm.submit(command.to_vec()));
        self.collect();
    }

    fn byte(&self, offset: u64) -> u8 {
        if offset >= BUFFER_OFFSET {
            self.buffer[(offset - BUFFER_OFFSET) as usize]
        } else {
            (self.register(offset & !3) >> ((offset & 3) * 8)) as u8
        }
    }
}

/// Whether an access of `len` bytes at `offset` is one the device serves.
fn valid(offset: u64, len: usize) -> bool {
    matches!(len, 1 | 2 | 4 | 8)
        && offset
            .checked_add(len as u64)
            .is_some_and(|e| e <= CRB_SIZE)
}

impl BusDevice for TpmCrb {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if !valid(offset, data.len()) {
            data.fill(0xff);
            return;
        }
        self.collect();
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.byte(offset + i as u64);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if !valid(offset, data.len()) {
            return;
        }
        self.collect();
        // Each register the access touches gets the bytes that fall in it, in order.
        let mut at = 0;
        while at < data.len() {
            let o = offset + at as u64;
            if o >= BUFFER_OFFSET {
                let start = (o - BUFFER_OFFSET) as usize;
                let n = data.len() - at;
                self.buffer[start..start + n].copy_from_slice(&data[at..]);
                return;
            }
            let reg = o & !3;
            let (mut value, mut mask) = (0u32, 0u32);
            while at < data.len() && (offset + at as u64) & !3 == reg {
                let shift = ((offset + at as u64) & 3) * 8;
                value |= u32::from(data[at]) << shift;
                mask |= 0xff << shift;
                at += 1;
            }
            self.write_register(reg, value, mask);
        }
    }
}

impl AcpiDevice for TpmCrb {
    /// `\_SB_.TPM0`: a TPM 2.0 (MSFT0101) present and enabled (_STA 0x0F), whose register file
    /// is the 4 KiB at [`CRB_BASE`].
    fn dsdt_aml(&self, aml: &mut Vec<u8>) {
        let memory = Memory32Fixed::new(true, CRB_BASE as u32, CRB_SIZE as u32);
        let resources = ResourceTemplate::new(vec![&memory]);
        let sta = Return::new(&0x0fu8);
        Device::new(
            Path::new("_SB_.TPM0"),
            vec![
                &Name::new(Path::new("_HID"), &"MSFT0101"),
                &Name::new(Path::new("_CRS"), &resources),
                &Method::new(Path::new("_STA"), 0, false, vec![&sta]),
            ],
        )
        .to_aml_bytes(aml);
    }

    /// The TPM2 table: platform class 0 (client), control area at [`CONTROL_AREA`], start
    /// method 7 (CRB), no event log.
    fn acpi_tables(&self) -> Vec<Vec<u8>> {
        let mut t = Sdt::new(
            *b"TPM2",
            TPM2_LENGTH,
            TPM2_REVISION,
            OEM_ID,
            OEM_TABLE_ID,
            OEM_REVISION,
        );
        t.write_u16(36, 0);
        t.write_u64(40, CONTROL_AREA);
        t.write_u32(48, START_METHOD_CRB);
        t.update_checksum();
        vec![t.as_slice().to_vec()]
    }
}
