use clap::Parser as _;

fn main() {
    let cli = agent_guard::cli::Cli::parse();
    std::process::exit(agent_guard::cli::dispatch(cli));
}
