import { dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

// Build output under build/, which the repository ignores; this folder is its own workspace root.
export default { distDir: 'build', poweredByHeader: false, outputFileTracingRoot: dirname(fileURLToPath(import.meta.url)) };
