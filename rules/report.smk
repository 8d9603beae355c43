rule report:
    """One self-contained HTML page with maps and plots of every result."""
    input:
        report_inputs(),
    output:
        html=REPORT_HTML,
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
