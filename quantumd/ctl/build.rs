//! Generates the man page and shell completions of quantumctl at build time,
//! into `target/<profile>/assets/` where packaging picks them up.

use std::path::PathBuf;

use clap::CommandFactory;

#[allow(dead_code)]
mod cli {
    include!("src/cli.rs");
}

fn main() -> std::io::Result<()> {
    println!("cargo:rerun-if-changed=src/cli.rs");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR set by cargo"));
    // OUT_DIR is target/<profile>/build/<pkg>-<hash>/out.
    let assets = out.ancestors().nth(3).map(|p| p.join("assets")).unwrap_or(out.clone());
    let completions = assets.join("completions");
    std::fs::create_dir_all(&completions)?;

    let mut cmd = cli::Cli::command();
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut page)?;
    std::fs::write(assets.join("quantumctl.1"), page)?;
    for sub in cmd.get_subcommands() {
        let mut page = Vec::new();
        let name = format!("quantumctl-{}", sub.get_name());
        clap_mangen::Man::new(sub.clone().name(name.clone())).render(&mut page)?;
        std::fs::write(assets.join(format!("{name}.1")), page)?;
    }
    for shell in [clap_complete::Shell::Bash, clap_complete::Shell::Zsh, clap_complete::Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd, "quantumctl", &completions)?;
    }
    Ok(())
}
