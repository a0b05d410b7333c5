//! Whole Dockerfiles as users write them, from text to the ops the builder carries out.

use std::collections::BTreeMap;

use hearth_dockerfile::{
    parse, parse_dockerignore, plan, plan_on_base, resolve_copy, Command, ContextEntry, CopyOp,
    EntryKind, ImageConfig, Proto, Step, DEFAULT_PATH,
};

const FLASK: &str = r#"# syntax=docker/dockerfile:1
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

WORKDIR /app

# Dependencies first, for the cache.
COPY requirements.txt .
RUN pip install -r requirements.txt

COPY . .

EXPOSE 8080
CMD ["gunicorn","-b","0.0.0.0:8080","app:app"]
"#;

const FLASK_DOCKERIGNORE: &str = "\
# Not part of the image
.git
.venv
**/__pycache__
*.md
!README.md
Dockerfile
";

fn flask_context() -> Vec<ContextEntry> {
    vec![
        ContextEntry::file("Dockerfile"),
        ContextEntry::file(".dockerignore"),
        ContextEntry::file("README.md"),
        ContextEntry::file("NOTES.md"),
        ContextEntry::file("requirements.txt"),
        ContextEntry::file("app.py"),
        ContextEntry::dir(".git"),
        ContextEntry::file(".git/HEAD"),
        ContextEntry::dir(".venv"),
        ContextEntry::file(".venv/bin/python"),
        ContextEntry::dir("templates"),
        ContextEntry::file("templates/index.html"),
        ContextEntry::dir("templates/__pycache__"),
        ContextEntry::file("templates/__pycache__/x.pyc"),
        ContextEntry::dir("__pycache__"),
        ContextEntry::file("__pycache__/app.cpython-312.pyc"),
    ]
}

fn op(src: &str, dest: &str, kind: EntryKind) -> CopyOp {
    CopyOp {
        src: src.into(),
        dest: dest.into(),
        kind,
        into_existing_dir: false,
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn flask_app_plans_to_workdir_copy_run_copy_and_gunicorn() {
    let df = parse(FLASK).unwrap();
    let p = plan(&df, &BTreeMap::new()).unwrap();
    assert_eq!(p.from, "python:3.12-slim");
    assert!(p.unused_build_args.is_empty());

    let descriptions: Vec<(usize, &str)> = p
        .steps
        .iter()
        .map(|s| (s.line(), s.description()))
        .collect();
    assert_eq!(
        descriptions,
        vec![
            (7, "WORKDIR /app"),
            (10, "COPY requirements.txt ."),
            (11, "RUN pip install -r requirements.txt"),
            (13, "COPY . ."),
        ]
    );

    match &p.steps[1] {
        Step::Copy {
            sources,
            dest,
            chown,
            chmod,
            is_add,
            ..
        } => {
            assert_eq!(sources, &strings(&["requirements.txt"]));
            assert_eq!(dest, "/app/");
            assert_eq!((chown, chmod, is_add), (&None, &None, &false));
        }
        other => panic!("{other:?}"),
    }
    match &p.steps[2] {
        Step::Run {
            argv_or_shell,
            env,
            workdir,
            user,
            ..
        } => {
            assert_eq!(
                argv_or_shell,
                &Command::Shell("pip install -r requirements.txt".into())
            );
            assert_eq!(
                argv_or_shell.argv(),
                strings(&["/bin/sh", "-c", "pip install -r requirements.txt"])
            );
            assert_eq!(
                env,
                &vec![
                    ("PATH".to_string(), DEFAULT_PATH.to_string()),
                    ("PYTHONDONTWRITEBYTECODE".to_string(), "1".to_string()),
                    ("PYTHONUNBUFFERED".to_string(), "1".to_string()),
                ]
            );
            assert_eq!(workdir, "/app");
            assert_eq!(user, &None);
        }
        other => panic!("{other:?}"),
    }

    assert_eq!(p.config.workdir, "/app");
    assert_eq!(p.config.exposed_ports, vec![(8080, Proto::Tcp)]);
    assert_eq!(
        p.config.process_argv(),
        Some(strings(&["gunicorn", "-b", "0.0.0.0:8080", "app:app"]))
    );
    assert_eq!(p.config.entrypoint, None);
}

#[test]
fn flask_app_copies_resolve_against_the_filtered_context() {
    let p = plan(&parse(FLASK).unwrap(), &BTreeMap::new()).unwrap();
    let ignore = parse_dockerignore(FLASK_DOCKERIGNORE).unwrap();
    let context = ignore.filter(&flask_context());

    let (
        Step::Copy { sources, dest, .. },
        Step::Copy {
            sources: all,
            dest: all_dest,
            ..
        },
    ) = (&p.steps[1], &p.steps[3])
    else {
        panic!("{:?}", p.steps);
    };
    assert_eq!(
        resolve_copy(sources, dest, &context).unwrap(),
        vec![op(
            "requirements.txt",
            "/app/requirements.txt",
            EntryKind::File
        )]
    );
    assert_eq!(
        resolve_copy(all, all_dest, &context).unwrap(),
        vec![
            op(".", "/app", EntryKind::Dir),
            op(".dockerignore", "/app/.dockerignore", EntryKind::File),
            op("README.md", "/app/README.md", EntryKind::File),
            op("app.py", "/app/app.py", EntryKind::File),
            op("requirements.txt", "/app/requirements.txt", EntryKind::File),
            op("templates", "/app/templates", EntryKind::Dir),
            op(
                "templates/index.html",
                "/app/templates/index.html",
                EntryKind::File
            ),
        ]
    );
}

const VENV_APP: &str = r#"ARG PYTHON_VERSION=3.12
FROM python:${PYTHON_VERSION}-slim AS runtime

ARG APP_USER=app
ARG PIP_INDEX_URL
LABEL org.opencontainers.image.title="Orders API" \
      org.opencontainers.image.version=${PYTHON_VERSION:-unknown}

RUN python -m venv /opt/venv && \
    useradd --create-home ${APP_USER}
ENV PATH="/opt/venv/bin:$PATH" \
    HOME=/home/$APP_USER

WORKDIR $HOME/src
COPY --chown=${APP_USER}:${APP_USER} --chmod=0644 requirements*.txt ./
RUN pip install -r requirements.txt
COPY --chown=${APP_USER}:${APP_USER} ["src", "./"]
USER ${APP_USER}
EXPOSE 8000/tcp 9100/udp
ENTRYPOINT ["python", "-m", "orders"]
CMD ["--port", "8000"]
"#;

#[test]
fn venv_app_with_args_labels_users_and_entrypoint() {
    let build_args: BTreeMap<String, String> = [
        (
            "PIP_INDEX_URL".to_string(),
            "https://pypi.internal/simple".to_string(),
        ),
        ("APP_USER".to_string(), "orders".to_string()),
        ("UNUSED".to_string(), "x".to_string()),
    ]
    .into();
    let p = plan(&parse(VENV_APP).unwrap(), &build_args).unwrap();
    assert_eq!(p.from, "python:3.12-slim");
    assert_eq!(p.stage_name.as_deref(), Some("runtime"));
    assert_eq!(p.unused_build_args, strings(&["UNUSED"]));

    assert_eq!(
        p.config.labels["org.opencontainers.image.title"],
        "Orders API"
    );
    // PYTHON_VERSION was declared before FROM only: not in scope in the stage.
    assert_eq!(
        p.config.labels["org.opencontainers.image.version"],
        "unknown"
    );

    let env: BTreeMap<_, _> = p.config.env.iter().cloned().collect();
    assert_eq!(env["PATH"], format!("/opt/venv/bin:{DEFAULT_PATH}"));
    assert_eq!(env["HOME"], "/home/orders");
    assert!(
        !env.contains_key("APP_USER"),
        "ARGs are not kept in the image"
    );

    let [Step::Run {
        env: run_env,
        user: run_user,
        ..
    }, Step::Workdir { path, .. }, Step::Copy {
        sources,
        dest,
        chown,
        chmod,
        ..
    }, Step::Run { env: pip_env, .. }, Step::Copy {
        sources: src2,
        dest: dest2,
        ..
    }] = p.steps.as_slice()
    else {
        panic!("{:#?}", p.steps);
    };
    let run_env: BTreeMap<_, _> = run_env.iter().cloned().collect();
    assert_eq!(run_env["APP_USER"], "orders");
    assert_eq!(run_env["PIP_INDEX_URL"], "https://pypi.internal/simple");
    assert_eq!(run_user, &None);
    assert_eq!(path, "/home/orders/src");
    assert_eq!(sources, &strings(&["requirements*.txt"]));
    assert_eq!(dest, "/home/orders/src/");
    assert_eq!(chown.as_deref(), Some("orders:orders"));
    assert_eq!(*chmod, Some(0o644));
    let pip_env: BTreeMap<_, _> = pip_env.iter().cloned().collect();
    assert_eq!(pip_env["PATH"], format!("/opt/venv/bin:{DEFAULT_PATH}"));
    assert_eq!(src2, &strings(&["src"]));
    assert_eq!(dest2, "/home/orders/src/");

    assert_eq!(p.config.user.as_deref(), Some("orders"));
    assert_eq!(
        p.config.exposed_ports,
        vec![(8000, Proto::Tcp), (9100, Proto::Udp)]
    );
    assert_eq!(
        p.config.process_argv(),
        Some(strings(&["python", "-m", "orders", "--port", "8000"]))
    );

    let context = vec![
        ContextEntry::file("requirements.txt"),
        ContextEntry::file("requirements-dev.txt"),
        ContextEntry::file("src/orders/__main__.py"),
    ];
    let ops = resolve_copy(sources, dest, &context).unwrap();
    assert_eq!(
        ops.iter().map(|o| o.dest.as_str()).collect::<Vec<_>>(),
        vec![
            "/home/orders/src/requirements-dev.txt",
            "/home/orders/src/requirements.txt"
        ]
    );
    let ops = resolve_copy(src2, dest2, &context).unwrap();
    assert_eq!(
        ops.iter().map(|o| o.dest.as_str()).collect::<Vec<_>>(),
        vec![
            "/home/orders/src",
            "/home/orders/src/orders",
            "/home/orders/src/orders/__main__.py"
        ]
    );
}

const BACKTICK: &str = concat!(
    "# escape=`\r\n",
    "FROM mcr.example/base\r\n",
    "ENV DIR=C:\\data `\r\n",
    "    OTHER=`$literal\r\n",
    "RUN echo C:\\path\\to `\r\n",
    "    && echo done\r\n",
    "COPY [\"a b.txt\", \"C:\\\\target\\\\\"]\r\n",
);

#[test]
fn backtick_escape_keeps_backslashes_literal() {
    let df = parse(BACKTICK).unwrap();
    assert_eq!(df.escape, '`');
    let p = plan(&df, &BTreeMap::new()).unwrap();
    let env: BTreeMap<_, _> = p.config.env.iter().cloned().collect();
    assert_eq!(env["DIR"], "C:\\data");
    assert_eq!(env["OTHER"], "$literal");
    match &p.steps[0] {
        Step::Run { argv_or_shell, .. } => assert_eq!(
            argv_or_shell,
            &Command::Shell("echo C:\\path\\to     && echo done".into())
        ),
        other => panic!("{other:?}"),
    }
    match &p.steps[1] {
        Step::Copy { sources, dest, .. } => {
            assert_eq!(sources, &strings(&["a b.txt"]));
            // A relative Windows-looking path is just a relative name under `/`.
            assert_eq!(dest, "/C:\\target\\");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn node_app_on_a_base_with_an_entrypoint() {
    let text = "\
FROM node:20
WORKDIR /usr/src/app
COPY package.json package-lock.json* ./
RUN npm ci --omit=dev
COPY . .
USER node
CMD [ \"node\", \"server.js\" ]
";
    let base = ImageConfig {
        env: vec![
            ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
            ("NODE_VERSION".into(), "20.11.0".into()),
        ],
        entrypoint: Some(strings(&["docker-entrypoint.sh"])),
        cmd: Some(strings(&["node"])),
        ..ImageConfig::default()
    };
    let p = plan_on_base(&parse(text).unwrap(), &BTreeMap::new(), &base).unwrap();
    assert_eq!(
        p.config.process_argv(),
        Some(strings(&["docker-entrypoint.sh", "node", "server.js"]))
    );
    let Step::Copy { sources, dest, .. } = &p.steps[1] else {
        panic!("{:?}", p.steps)
    };
    // package-lock.json* matches nothing here, which is fine since package.json exists.
    let ops = resolve_copy(sources, dest, &[ContextEntry::file("package.json")]).unwrap();
    assert_eq!(
        ops,
        vec![op(
            "package.json",
            "/usr/src/app/package.json",
            EntryKind::File
        )]
    );
    match &p.steps[2] {
        Step::Run { env, .. } => assert!(env.contains(&("NODE_VERSION".into(), "20.11.0".into()))),
        other => panic!("{other:?}"),
    }
}

/// A realistic Dockerfile with `refused` put on line 9.
fn with_line_9(refused: &str) -> String {
    format!(
        "FROM python:3.12-slim\n\
         # comment\n\
         \n\
         WORKDIR /app\n\
         COPY requirements.txt .\n\
         RUN pip install \\\n\
         \x20   -r requirements.txt\n\
         COPY . .\n\
         {refused}\n\
         CMD [\"python\", \"app.py\"]\n"
    )
}

#[test]
fn every_refused_form_is_named_with_its_line() {
    let cases = [
        (
            "VOLUME /data",
            "VOLUME is not supported by Hearth's builder",
        ),
        (
            "ONBUILD RUN make",
            "ONBUILD is not supported by Hearth's builder",
        ),
        (
            "HEALTHCHECK CMD curl -f http://localhost/",
            "HEALTHCHECK is not supported by Hearth's builder",
        ),
        (
            "STOPSIGNAL SIGINT",
            "STOPSIGNAL is not supported by Hearth's builder",
        ),
        (
            "SHELL [\"/bin/bash\", \"-c\"]",
            "SHELL is not supported by Hearth's builder",
        ),
        (
            "MAINTAINER someone@example.com",
            "MAINTAINER is not supported by Hearth's builder",
        ),
        (
            "FROM python:3.12-slim",
            "a second FROM is not supported by Hearth's builder",
        ),
        (
            "RUN <<EOF",
            "RUN with a heredoc (<<EOF) is not supported by Hearth's builder",
        ),
        (
            "COPY <<EOF /etc/x",
            "COPY with a heredoc (<<EOF) is not supported by Hearth's builder",
        ),
        (
            "RUN --mount=type=cache,target=/root/.cache pip install x",
            "RUN --mount is not supported by Hearth's builder",
        ),
        (
            "RUN --network=host curl x",
            "RUN --network is not supported by Hearth's builder",
        ),
        (
            "COPY --from=build /out /out",
            "COPY --from is not supported by Hearth's builder",
        ),
        (
            "ADD --from=build /out /out",
            "ADD --from is not supported by Hearth's builder",
        ),
        (
            "COPY --parents a/b ./",
            "COPY --parents is not supported by Hearth's builder",
        ),
        ("FROBNICATE now", "unknown instruction: FROBNICATE"),
        ("COPY --own=a b c", "unknown flag for COPY: --own"),
    ];
    for (refused, message) in cases {
        let e = parse(&with_line_9(refused)).unwrap_err();
        assert_eq!(e.line, 9, "{refused}: {e}");
        assert!(
            e.to_string().starts_with(&format!("line 9: {message}")),
            "{refused}: {e}"
        );
    }
    let plan_cases = [
        ("ADD https://example.com/x.tar.gz /opt/", "ADD from a URL"),
        (
            "ADD vendor.tar.gz /opt/",
            "ADD of an archive is not supported, use COPY and RUN tar",
        ),
        (
            "COPY ../outside /x",
            "COPY: source ../outside is outside the build context",
        ),
        ("COPY --chmod=a+x run.sh /", "COPY: symbolic --chmod modes"),
        (
            "EXPOSE 8080:80",
            "EXPOSE 8080:80: a host address or host port is not supported",
        ),
    ];
    for (refused, message) in plan_cases {
        let df = parse(&with_line_9(refused)).unwrap();
        let e = plan(&df, &BTreeMap::new()).unwrap_err();
        assert_eq!(e.line, 9, "{refused}: {e}");
        assert!(
            e.to_string().starts_with(&format!("line 9: {message}")),
            "{refused}: {e}"
        );
    }
    // And the unchanged file is fine.
    plan(&parse(&with_line_9("")).unwrap(), &BTreeMap::new()).unwrap();
}

#[test]
fn a_refused_form_after_a_second_from_reports_the_first_problem() {
    let e = parse("FROM a\nFROM b\nVOLUME /x\n").unwrap_err();
    assert_eq!(e.line, 2);
}
