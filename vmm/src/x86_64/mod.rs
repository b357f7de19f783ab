//! x86_64 vCPU set-up: CPUID, registers, MSRs and the local APIC.

pub mod cpuid;
pub mod regs;
