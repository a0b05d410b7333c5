//! Property tests: arbitrary text never panics the parser or the planner, and every error
//! names a line that exists in the input.

use std::collections::BTreeMap;

use hearth_dockerfile::{line_count, parse, parse_dockerignore, plan, resolve_copy, ContextEntry};
use proptest::prelude::*;

/// Pieces Dockerfiles are made of, so that generated text reaches deep into the parser.
fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("FROM ".to_string()),
        Just("from".to_string()),
        Just("ARG ".to_string()),
        Just("RUN ".to_string()),
        Just("COPY ".to_string()),
        Just("ADD ".to_string()),
        Just("ENV ".to_string()),
        Just("LABEL ".to_string()),
        Just("EXPOSE ".to_string()),
        Just("WORKDIR ".to_string()),
        Just("USER ".to_string()),
        Just("CMD ".to_string()),
        Just("ENTRYPOINT ".to_string()),
        Just("VOLUME ".to_string()),
        Just("# escape=`".to_string()),
        Just("# escape=\\".to_string()),
        Just("# syntax=x".to_string()),
        Just("--chown=".to_string()),
        Just("--chmod=".to_string()),
        Just("--link".to_string()),
        Just("--from=".to_string()),
        Just(" AS ".to_string()),
        Just("\n".to_string()),
        Just("\r\n".to_string()),
        Just("\\\n".to_string()),
        Just("`\n".to_string()),
        Just("\\".to_string()),
        Just("`".to_string()),
        Just("#".to_string()),
        Just(" ".to_string()),
        Just("\t".to_string()),
        Just("\"".to_string()),
        Just("'".to_string()),
        Just("[".to_string()),
        Just("]".to_string()),
        Just("\",\"".to_string()),
        Just("$".to_string()),
        Just("${".to_string()),
        Just("}".to_string()),
        Just(":-".to_string()),
        Just(":+".to_string()),
        Just("#".to_string()),
        Just("%%".to_string()),
        Just("/".to_string()),
        Just("//".to_string()),
        Just("=".to_string()),
        Just("<<EOF".to_string()),
        Just("..".to_string()),
        Just("*".to_string()),
        Just("8080".to_string()),
        Just("-".to_string()),
        Just(":".to_string()),
        Just("/tcp".to_string()),
        Just("é".to_string()),
        Just("\u{feff}".to_string()),
        // Compiled once: a `&str` strategy compiles its regex for every value.
        proptest::string::string_regex("[a-zA-Z0-9_.]{1,8}").expect("valid regex"),
    ]
}

fn path_like() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(vec![
            'a', 'b', 'c', '.', '/', '*', '?', '[', ']', '^', '-', '\\',
        ]),
        0..8,
    )
    .prop_map(|chars| chars.into_iter().collect())
}

fn dockerfile_like() -> impl Strategy<Value = String> {
    prop::collection::vec(fragment(), 0..60).prop_map(|parts| parts.concat())
}

/// Text within one instruction: no keyword, no line break except continuations.
fn arg_fragment() -> impl Strategy<Value = String> {
    fragment().prop_filter("no bare line break", |f| {
        !(f == "\n"
            || f == "\r\n"
            || f.ends_with(' ') && f.chars().all(|c| c.is_ascii_uppercase() || c == ' '))
    })
}

fn keyword() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "ARG",
        "RUN",
        "COPY",
        "ADD",
        "ENV",
        "LABEL",
        "EXPOSE",
        "WORKDIR",
        "USER",
        "CMD",
        "ENTRYPOINT",
        "run",
        "copy",
        "env",
    ])
}

/// A Dockerfile that gets past the first lines: directives, ARGs, a FROM, then
/// instructions whose arguments are arbitrary fragments.
fn structured_dockerfile() -> impl Strategy<Value = String> {
    let line = (keyword(), prop::collection::vec(arg_fragment(), 0..8))
        .prop_map(|(kw, parts)| format!("{kw} {}\n", parts.concat()));
    (
        prop::sample::select(vec!["", "# escape=`\n", "# syntax=x\n# escape=\\\n"]),
        prop::collection::vec(arg_fragment(), 0..4),
        prop::collection::vec(line, 0..12),
    )
        .prop_map(|(directives, from_args, lines)| {
            format!(
                "{directives}ARG A=1\nFROM img:$A{}\n{}",
                from_args.concat(),
                lines.concat()
            )
        })
}

fn check(text: &str) -> Result<(), TestCaseError> {
    let lines = line_count(text).max(1);
    match parse(text) {
        Err(e) => {
            prop_assert!(
                (1..=lines).contains(&e.line),
                "parse error line {} outside 1..={lines}: {e}",
                e.line
            );
            prop_assert!(!e.message.is_empty());
        }
        Ok(df) => {
            let args: BTreeMap<String, String> = [("A".to_string(), "$B".to_string())].into();
            match plan(&df, &args) {
                Err(e) => prop_assert!(
                    (1..=lines).contains(&e.line),
                    "plan error line {} outside 1..={lines}: {e}",
                    e.line
                ),
                Ok(p) => {
                    for step in &p.steps {
                        prop_assert!((1..=lines).contains(&step.line()));
                        prop_assert!(step.description().chars().count() <= 100);
                    }
                    let _ = p.config.process_argv();
                }
            }
        }
    }
    Ok(())
}

/// XorShift: the default ChaCha generator dominates the run time of an unoptimised build.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        rng_algorithm: proptest::test_runner::RngAlgorithm::XorShift,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn arbitrary_text_never_panics_and_errors_name_an_existing_line(text in any::<String>()) {
        check(&text)?;
    }

    #[test]
    fn structured_dockerfiles_never_panic_and_errors_name_an_existing_line(text in structured_dockerfile()) {
        check(&text)?;
    }

    #[test]
    fn dockerfile_like_text_never_panics_and_errors_name_an_existing_line(text in dockerfile_like()) {
        check(&text)?;
    }

}

proptest! {
    #![proptest_config(config(500))]

    #[test]
    fn copy_resolution_and_dockerignore_never_panic(
        sources in prop::collection::vec(dockerfile_like(), 0..4),
        dest in dockerfile_like(),
        paths in prop::collection::vec(path_like(), 0..12),
        ignore in dockerfile_like(),
    ) {
        let context: Vec<ContextEntry> = paths
            .iter()
            .enumerate()
            .map(|(i, p)| if i % 3 == 0 { ContextEntry::dir(p.clone()) } else { ContextEntry::file(p.clone()) })
            .collect();
        if let Ok(ops) = resolve_copy(&sources, &dest, &context) {
            for op in ops {
                prop_assert!(op.dest.starts_with('/'));
                prop_assert!(!op.src.starts_with("../") && op.src != "..");
            }
        }
        if let Ok(ignore) = parse_dockerignore(&ignore) {
            for p in &paths {
                let _ = ignore.ignored(p);
            }
            for s in &sources {
                let _ = ignore.ignored(s);
            }
        }
    }
}
