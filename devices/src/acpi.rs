//! What a device tells the guest about itself besides its registers: AML for the DSDT, whole
//! ACPI tables of its own and, on the firmware path, fw_cfg files.
//!
//! The VMM keeps one registration list of the devices that describe themselves (in
//! `Machine::build`) and gathers what they contribute with [`Contributions::collect`]. The
//! `boot` crate's table builders take the result as plain bytes and know nothing about the
//! devices, so a new device is its own module implementing [`AcpiDevice`] plus one entry in
//! that list.

/// A device that describes itself in the machine's ACPI tables or fw_cfg. Every method has a
/// default that contributes nothing, so a device implements only what it has.
pub trait AcpiDevice {
    /// Append the device's AML to the DSDT: its `Device` object(s) under `\_SB`, named by full
    /// path (`\_SB_.COM1`), as `acpi_tables`' `Aml::to_aml_bytes` writes them.
    fn dsdt_aml(&self, _aml: &mut Vec<u8>) {}

    /// Whole ACPI tables of the device's own (a TPM2 table, say), each starting with its
    /// 36-byte header (signature and length). The builders place them, list them in the XSDT
    /// and compute their checksums.
    fn acpi_tables(&self) -> Vec<Vec<u8>> {
        Vec::new()
    }

    /// Files for the firmware's fw_cfg, as (name, content). Only the firmware path has fw_cfg;
    /// the direct path ignores them.
    fn fw_cfg_files(&self) -> Vec<(String, Vec<u8>)> {
        Vec::new()
    }
}

/// Everything the registered devices contribute, in the order of the registration list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Contributions {
    /// The devices' AML, concatenated: the start of the DSDT's body.
    pub aml: Vec<u8>,
    /// The devices' own ACPI tables.
    pub tables: Vec<Vec<u8>>,
    /// The devices' fw_cfg files, (name, content).
    pub fw_cfg_files: Vec<(String, Vec<u8>)>,
}

impl Contributions {
    /// Gather what `devices` contribute, in their order.
    pub fn collect(devices: &[&dyn AcpiDevice]) -> Self {
        let mut c = Contributions::default();
        for d in devices {
            d.dsdt_aml(&mut c.aml);
            c.tables.extend(d.acpi_tables());
            c.fw_cfg_files.extend(d.fw_cfg_files());
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Contributes nothing: every default.
    struct Silent;
    impl AcpiDevice for Silent {}

    /// Contributes one of everything, marked with `tag`.
    struct Loud(u8);
    impl AcpiDevice for Loud {
        fn dsdt_aml(&self, aml: &mut Vec<u8>) {
            aml.extend_from_slice(&[self.0; 3]);
        }
        fn acpi_tables(&self) -> Vec<Vec<u8>> {
            vec![vec![self.0; 36]]
        }
        fn fw_cfg_files(&self) -> Vec<(String, Vec<u8>)> {
            vec![(format!("opt/test/{}", self.0), vec![self.0])]
        }
    }

    #[test]
    fn defaults_contribute_nothing() {
        assert_eq!(Contributions::collect(&[&Silent]), Contributions::default());
        assert_eq!(Contributions::collect(&[]), Contributions::default());
    }

    #[test]
    fn contributions_keep_the_registration_order() {
        let c = Contributions::collect(&[&Loud(1), &Silent, &Loud(2)]);
        assert_eq!(c.aml, [1, 1, 1, 2, 2, 2]);
        assert_eq!(c.tables, [vec![1u8; 36], vec![2u8; 36]]);
        assert_eq!(
            c.fw_cfg_files,
            [
                ("opt/test/1".to_string(), vec![1]),
                ("opt/test/2".to_string(), vec![2])
            ]
        );
    }
}
