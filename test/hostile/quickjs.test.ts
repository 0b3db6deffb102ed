import quickjs from '../../sandboxes/quickjs/index.js';
import { hostileSuite } from '../../sandboxes/quickjs/hostile.js';

hostileSuite(quickjs, 'quickjs');
