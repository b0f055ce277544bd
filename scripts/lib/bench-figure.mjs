// One figure of issue 13's table as a benchmark measured it, printed as one line that
// scripts/bench.mjs (`npm run bench`) collects into its summary. The benchmark prints its own
// details as well; this line is only the figure, its spread over rounds, the goal and the verdict.

export const FIGURE_PREFIX = 'bench-figure: ';

/**
 * `figure` names what was measured; `min`, `median` and `max` are over the benchmark's rounds (a
 * ratio against its baseline where the figure is one, else the unit the goal is in); `goal` is the
 * issue's target as text; `met` is the verdict on the median. `digits` sets the printed precision.
 */
export function reportFigure({ figure, min, median, max, goal, met, digits = 2 }) {
  process.stdout.write(
    `${FIGURE_PREFIX}${JSON.stringify({ figure, min, median, max, goal, met, digits })}\n`,
  );
}
