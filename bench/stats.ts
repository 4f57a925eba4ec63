// Latency samples and their percentiles. Every sample is kept (a few million
// numbers at most), so percentiles are exact rather than bucketed.

export class Samples {
  private values = new Float64Array(1 << 16);
  private count = 0;
  private sorted = false;

  add(value: number): void {
    if (this.count === this.values.length) {
      const grown = new Float64Array(this.values.length * 2);
      grown.set(this.values);
      this.values = grown;
    }
    this.values[this.count++] = value;
    this.sorted = false;
  }

  get size(): number {
    return this.count;
  }

  /** The nearest-rank percentile (0 < p ≤ 100); NaN without samples. */
  percentile(p: number): number {
    if (this.count === 0) return Number.NaN;
    const view = this.values.subarray(0, this.count);
    if (!this.sorted) {
      view.sort();
      this.sorted = true;
    }
    return view[Math.min(this.count - 1, Math.max(0, Math.ceil((p / 100) * this.count) - 1))];
  }
}
