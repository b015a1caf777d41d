// Screenshots of a finished tiny pipeline in the Prefect and MLflow UIs (headless Chromium through
// playwright-core; scripts/screenshots.sh sets everything up and passes the ids in the environment).
//   PREFECT_URL, FLOW_RUN_ID, MLFLOW_URL, EXPERIMENT_ID, PARENT_RUN_ID, STAGE_RUN_ID, THINK_RUN_ID, OUT_DIR
import { chromium } from "playwright-core";

const env = (k) => {
  if (!process.env[k]) throw new Error(`${k} is not set`);
  return process.env[k];
};
const out = env("OUT_DIR");
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-dev-shm-usage"],
});
const page = await browser.newPage({ viewport: { width: 1600, height: 1000 } });

async function shot(name, url, settle, prepare) {
  await page.goto(url, { waitUntil: "networkidle", timeout: 90000 });
  if (prepare) await prepare();
  await page.waitForTimeout(settle);
  await page.screenshot({ path: `${out}/${name}` });
  console.log(`${out}/${name}  <-  ${url}`);
}

// Prefect: the pipeline's flow run page (timeline graph of the stage sub-flows and their tasks)
await shot("pipeline-prefect-flow-run.png", `${env("PREFECT_URL")}/runs/flow-run/${env("FLOW_RUN_ID")}`, 6000);

// MLflow: the experiment's runs, the pipeline run expanded to show its nested stage runs
const mlflow = env("MLFLOW_URL");
await shot("pipeline-mlflow-runs.png", `${mlflow}/#/experiments/${env("EXPERIMENT_ID")}`, 3000, async () => {
  const expand = page.locator('[data-testid="nested-runs-expander"], button[aria-label*="xpand"]').first();
  if (await expand.count()) await expand.click().catch(() => {});
});

// MLflow: the pipeline's loss plot and a stage's plots (artifact previews)
await shot("pipeline-mlflow-loss.png",
  `${mlflow}/#/experiments/${env("EXPERIMENT_ID")}/runs/${env("PARENT_RUN_ID")}/artifacts/plots/pipeline_loss.png`, 4000);
await shot("pipeline-mlflow-thinking-budget.png",
  `${mlflow}/#/experiments/${env("EXPERIMENT_ID")}/runs/${env("THINK_RUN_ID")}/artifacts/plots/thinking_budget.png`, 4000);
await browser.close();
