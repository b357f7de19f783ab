fn main() {
    let a: Vec<String> = std::env::args().collect();
    let cfg = vmm::VmConfig {
        name: "t".into(),
        vcpus: a[3].parse().unwrap(),
        mem_bytes: a[4].parse::<u64>().unwrap() << 20,
        kernel: a[1].clone().into(),
        initrds: vec![a[2].clone().into()],
        extra_cmdline: a[5..].to_vec(),
        kvm: vmm::KvmSource::Open,
    };
    let r = vmm::run(cfg);
    eprintln!("result: {r:?}");
}
