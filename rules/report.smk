rule report:
    """One self-contained HTML page with maps and plots of every result."""
    input:
        report_inputs(),
    output:
        html=report(REPORT_HTML, caption="../docs/report_caption.rst", category="Report"),
        figures=report(
            directory("results/report/figures"),
            patterns=["{name}.png"],
            caption="../docs/figure_caption.rst",
            category="Figures",
        ),
    params:
        manifest=manifest(),
        title=REPORT["title"],
        top_n=REPORT["top_n"],
        config=config,
        code=lambda wc: code("report"),
    log:
        "results/logs/report.log",
    benchmark:
        "results/benchmarks/report.tsv"
    conda:
        "../envs/mechflow.yaml"
    script:
        "../scripts/report.py"
