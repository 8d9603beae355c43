rule report:
    """One self-contained HTML page with maps and plots of every result."""
    input:
        report_inputs(JOBS),
    output:
        html=report(REPORT_HTML, caption="../docs/report_caption.rst", category="Report"),
        figures=report(
            directory(REPORT_FIGURES),
            patterns=["{name}.png"],
            caption="../docs/figure_caption.rst",
            category="Figures",
        ),
        table=report(REPORT_TABLE, caption="../docs/table_caption.rst", category="Report"),
    params:
        manifest=canonical(JOBS),
        report=settings(REPORT),
        study=report_step.study_settings(config),
        benchmarks=BENCHMARKS,
        code=code("report"),
    log:
        f"{LOGS}/report.log",
    benchmark:
        f"{BENCHMARKS}/report.tsv"
    conda:
        "../envs/mechflow.yaml"
    script:
        "../scripts/report.py"
