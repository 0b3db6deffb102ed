import isolate from '../../sandboxes/isolate/index.js';
import { hostileSuite } from '../../sandboxes/quickjs/hostile.js';

hostileSuite(isolate, 'isolate');
