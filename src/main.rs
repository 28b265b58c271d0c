fn main() -> std::process::ExitCode {
    salvage::cli::main()
}
