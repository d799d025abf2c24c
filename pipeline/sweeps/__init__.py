"""Ray Tune sweeps: the sweep file's schema (`spec`), the driver that runs Tune (`driver`), what
runs inside one trial's process (`trial`), the sweep directory's record (`record`) and the report
(`report`, no Ray import). Imports every wing below, and tracking."""
