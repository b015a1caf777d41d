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
  // both UIs keep polling, so "networkidle" may never come: load, then let the page settle
  await page.goto(url, { waitUntil: "load", timeout: 90000 });
  await page.waitForTimeout(settle);
  if (prepare) await prepare();
  await page.waitForTimeout(settle);
  await page.screenshot({ path: `${out}/${name}` });
  console.log(`${out}/${name}  <-  ${url}`);
}

// Prefect: the pipeline's flow run page (timeline graph of the stage sub-flows and their tasks)
await shot("pipeline-prefect-flow-run.png", `${env("PREFECT_URL")}/runs/flow-run/${env("FLOW_RUN_ID")}`, 6000);

// MLflow: the experiment's training runs, the pipeline run expanded to show its nested stage runs
const mlflow = env("MLFLOW_URL");
const exp = env("EXPERIMENT_ID");
const closeAssistant = () => page.getByRole("button", { name: "Close", exact: true }).click({ timeout: 3000 }).catch(() => {});
await shot("pipeline-mlflow-runs.png", `${mlflow}/#/experiments/${exp}/runs`, 3000, async () => {
  await closeAssistant();
  await page.locator(".ag-row .du-bois-light-btn-link").first().click({ timeout: 5000 }).catch(() => {});
});

// MLflow: the pipeline's loss plot and T4's thinking-budget plot (artifact previews)
await shot("pipeline-mlflow-loss.png",
  `${mlflow}/#/experiments/${exp}/runs/${env("PARENT_RUN_ID")}/artifacts/plots/pipeline_loss.png`, 3000, closeAssistant);
await shot("pipeline-mlflow-thinking-budget.png",
  `${mlflow}/#/experiments/${exp}/runs/${env("THINK_RUN_ID")}/artifacts/plots/thinking_budget.png`, 3000, closeAssistant);
await browser.close();
