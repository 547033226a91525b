fn main() -> std::process::ExitCode {
    redis_xds::app::cli::main()
}
