//! `hearth-supervisor`: started by `hearth` with its configuration on fd 3;
//! see the library's documentation.

fn main() -> std::process::ExitCode {
    hearth_supervisor::run::main()
}
