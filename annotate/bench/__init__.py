"""`annotate bench`: throughput and memory of each pipeline step beside the plain way of doing it.

Every row is measured at three sizes, so that a cost that grows faster than the work shows. Rates
are per core where the target is per core (the step runs in one process with one thread); the
end-to-end row uses the whole machine. Peak memory is measured in a child process per case
(`os.wait4` reports the child's own maximum RSS). Results print as a table and go to JSON.

The baselines are what a user would write without this package:
- ingest: an astropy loop opening each SDSS spec file and copying its COADD columns;
- render: matplotlib drawing the same 2D Map as Spectromer does (figure 2.24 in at 100 dpi, imshow,
  savefig to PNG);
- end to end: the same model fed one PNG per spectrum (the paper's way);
- template fit: redrock 0.21.0's zfind with the same bases in its template format (the `compare`
  extra; without it the baseline is NaN and the row says so);
- write-back: `cp` of the input file, and astropy reading the whole table, appending the columns
  and writing it all out.
"""

from .common import BASELINE_LIMIT, QUICK_SIZES, SIZES, Row, format_table, linearity, machine, speed_reference  # noqa: F401
from .run import BenchRun, run_bench  # noqa: F401
