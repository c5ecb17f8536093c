//! Prints how many instructions the kernel's verifier processed for each loaded BPF LSM
//! program, and their sum: a deterministic measure of what a change to the BPF side costs
//! at load time, where wall-clock load times under emulation are noisy. Run it as root
//! while the daemon (or a `run`) has the programs loaded.
use aya::programs::{loaded_programs, LsmAttachType, ProgramType};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let lsm = ProgramType::Lsm(LsmAttachType::Mac).into();
    let mut total = 0u64;
    let mut rows = Vec::new();
    for program in loaded_programs() {
        let program = program?;
        if program.program_type() != lsm {
            continue;
        }
        let name = program.name_as_str().unwrap_or("?").to_owned();
        let count = program.verified_instruction_count().unwrap_or(0);
        total += u64::from(count);
        rows.push((count, name));
    }
    rows.sort_by(|a, b| b.cmp(a));
    for (count, name) in rows {
        println!("{count:>9}  {name}");
    }
    println!("{total:>9}  total");
    Ok(())
}
