fn main() -> std::process::ExitCode {
    match osm_agent::run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("osm-agent: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
