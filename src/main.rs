fn main() -> std::process::ExitCode {
    redis_xds::cli::main()
}
